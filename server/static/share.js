// The page of a share link, /s/{id}: the shared chat, read-only (a snapshot).
// A signed-in visitor (the login cookie) may continue it as their own copy.
// Text goes in with textContent only: nothing shared is ever parsed as HTML.

const $ = (id) => document.getElementById(id);

function shareId() {
  const m = /^\/s\/([A-Za-z0-9_-]+)$/.exec(location.pathname);
  return m ? m[1] : null;
}

function show(state, text) {
  $('share').dataset.state = state;
  $('share-status').textContent = text;
}

function render(chat) {
  document.title = `${chat.title || 'Shared chat'} · Roost`;
  $('share-title').textContent = chat.title || 'Shared chat';
  const when = new Date(chat.shared_at).toLocaleString();
  $('share-meta').textContent =
    `Shared ${when}` + (chat.branch === 'all' ? ' · every branch' : '') +
    (chat.expires_at ? ` · until ${new Date(chat.expires_at).toLocaleString()}` : '');
  const list = $('share-messages');
  list.replaceChildren();
  for (const m of chat.messages) {
    const li = document.createElement('li');
    li.className = 'msg';
    li.dataset.role = m.role;
    li.dataset.id = m.id;
    const role = document.createElement('div');
    role.className = 'role';
    role.textContent = m.role;
    const body = document.createElement('div');
    body.className = 'body';
    body.textContent = m.content;
    li.append(role, body);
    list.append(li);
  }
  show('ready', chat.messages.length ? '' : 'This chat has no messages.');
}

async function offerCopy(id) {
  const who = await fetch('/api/whoami', {credentials: 'same-origin'});
  if (!who.ok) return; // not signed in: the share stays read-only
  const button = $('share-copy');
  button.hidden = false;
  button.addEventListener('click', async () => {
    button.disabled = true;
    const r = await fetch(`/api/shares/${id}/copy`, {method: 'POST', credentials: 'same-origin'});
    if (!r.ok) {
      button.disabled = false;
      $('share-copy-status').textContent = 'Could not make a copy.';
      return;
    }
    const session = await r.json();
    location.href = `/#/s/${encodeURIComponent(session.id)}`;
  });
}

async function main() {
  const id = shareId();
  if (id === null) return show('missing', 'This is not a share link.');
  const r = await fetch(`/api/shares/${id}`, {credentials: 'omit'});
  if (r.status === 404) return show('missing', 'This share link was revoked, has expired, or never existed.');
  if (!r.ok) return show('error', `The share could not be loaded (HTTP ${r.status}).`);
  render(await r.json());
  await offerCopy(id);
}

main();
