// Roost's web page: the chat list, the header, the composer, and the open chat
// (chat.js: a ChatView, fed by HTTP pages, its SSE replies and its WebSocket).

import { api, ApiError, onUnauthorized } from './api.js';
import { ChatView } from './chat.js';
import { fillIcons } from './icons.js';
import { SessionFeed } from './sessions.js';
import { sessionTitle, titleFrom } from './titles.js';
import { editor, el, relativeTime, safeSnippet } from './view.js';

const $ = (id) => document.getElementById(id);

const ui = {
  conn: $('conn'), connText: $('conn-text'), menu: $('menu-toggle'), sidebar: $('sidebar'),
  list: $('session-list'), more: $('more-sessions'), newSession: $('new-session'),
  empty: $('empty-state'), view: $('chat-view'), title: $('chat-title'),
  renameBtn: $('rename'), renameForm: $('rename-form'), renameInput: $('rename-input'),
  renameCancel: $('rename-cancel'), deleteBtn: $('delete'),
  pinBtn: $('pin'), archiveBtn: $('archive'), folderBtn: $('move-folder'), showArchived: $('show-archived'),
  allSearchForm: $('all-search-form'), allSearchInput: $('all-search-input'),
  allResults: $('all-search-results'), allSummary: $('all-search-summary'), allList: $('all-search-list'),
  exportJson: $('export-json'), exportMd: $('export-md'),
  menuButton: $('chat-menu-button'), chatMenu: $('chat-menu'), searchToggle: $('search-toggle'),
  account: $('account'), accountUser: $('account-user'), signOut: $('sign-out'),
  model: $('model-picker'), scrim: $('scrim'),
  searchForm: $('search-form'), searchInput: $('search-input'), results: $('search-results'),
  resultsList: $('search-list'), resultsSummary: $('search-summary'), resultsClose: $('search-close'),
  log: $('log'), messages: $('messages'), older: $('load-older'), historyStatus: $('history-status'),
  composer: $('composer'), input: $('composer-input'), send: $('send'), stop: $('stop'),
  attachLabel: $('attach-label'), attachInput: $('attach-input'), chips: $('attach-chips'),
  login: $('login'), loginForm: $('login-form'), loginToken: $('login-token'), loginError: $('login-error'),
  toast: $('toast'),
};

const features = { search: null, export: null, attachments: null, user_events: null, search_all: null };
let me = null; // the capabilities answer: {user, auth, features, ...}
let models = null; // GET /api/models
const MODEL_KEY = 'roost.model';

let sessions = { items: [], next: null };
let view = null; // the open chat, see openSession

// ------------------------------------------------------------------ small things

let toastTimer = null;
function toast(text) {
  ui.toast.textContent = text;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 5000);
}

const UNREACHABLE = "Can't reach the server; retrying";

/** A failed request, said the way a user can act on it (network, 4xx/5xx, or a bug). */
function fail(err) {
  if (err instanceof ApiError && err.status === 401) return;
  if (err && err.name === 'AbortError') return;
  if (err instanceof TypeError && !(err instanceof ApiError)) {
    // fetch rejects with a TypeError only when the request never got an answer;
    // the dot says so unless the open chat's socket is still up (it knows better)
    if (!view || !view.live.connected()) setConn('offline');
    toast(UNREACHABLE);
    return;
  }
  if (!(err instanceof ApiError)) console.error(err);
  toast(err instanceof ApiError ? err.message : `Something went wrong: ${err}`);
}

const CONN_TEXT = {
  idle: '', connecting: 'Connecting…', connected: 'Live',
  reconnecting: 'Reconnecting…', offline: UNREACHABLE,
};
function setConn(state) {
  ui.conn.dataset.state = state;
  ui.connText.textContent = CONN_TEXT[state] ?? state;
}

// ------------------------------------------------------------------ login (tokens)

onUnauthorized(() => {
  if (!ui.login.open) {
    ui.loginError.textContent = '';
    ui.login.showModal();
    ui.loginToken.focus();
  }
});

ui.loginForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await api('POST', '/api/login', { token: ui.loginToken.value });
    ui.loginToken.value = '';
    ui.login.close();
    closeView();
    await boot();
  } catch (err) {
    ui.loginError.textContent = err instanceof ApiError && err.status === 401
      ? 'That token was not accepted.' : String(err.message || err);
  }
});

// ------------------------------------------------------------------ session list

/** Apply a change to one listed chat (a count, a title) and re-render the list. */
function patchSession(sid, change) {
  const s = sessions.items.find((x) => x.id === sid);
  if (!s) return;
  change(s);
  renderSessions();
}

function renderSessions() {
  ui.list.replaceChildren();
  for (const s of sessions.items) {
    const current = view && view.sid === s.id;
    const marks = [s.pinned ? 'Pinned' : '', s.archived ? 'Archived' : '', s.folder ? `in ${s.folder}` : '']
      .filter(Boolean).join(' · ');
    ui.list.append(el('li', { class: s.pinned ? 'pinned' : null }, el(
      'a',
      { href: `#/s/${encodeURIComponent(s.id)}`, 'aria-current': current ? 'page' : null, dataset: { sid: s.id } },
      el('span', { class: 'title' }, sessionTitle(s)),
      el('span', { class: 'when' }, `${marks ? `${marks} · ` : ''}${s.message_count} message${s.message_count === 1 ? '' : 's'} · ${relativeTime(s.updated_at)}`),
    )));
  }
  if (!sessions.items.length) ui.list.append(el('li', { class: 'when' }, 'No chats yet.'));
  ui.more.hidden = !sessions.next;
}

let showArchived = false;
const listQuery = () => `/api/sessions?limit=50${showArchived ? '&archived=true' : ''}`;

// Loads overlap (a poll, the list feed, another tab, an organise): the one asked for
// last wins, so a slow answer from before a change cannot repaint the list stale.
let listAsked = 0;
async function loadSessions() {
  const asked = ++listAsked;
  const data = await api('GET', listQuery());
  if (asked !== listAsked) return;
  // keep chats loaded with "Load more" that are still there
  const known = new Set(data.items.map((s) => s.id));
  const older = data.next_cursor ? sessions.items.filter((s) => !known.has(s.id) && sessions.items.indexOf(s) >= data.items.length) : [];
  sessions = { items: [...data.items, ...older], next: data.next_cursor };
  renderSessions();
  if (!view && ui.conn.dataset.state === 'offline') setConn('idle'); // the server answers again
}

// signed out (tokens mode), there is no list to refresh: polling would only collect 401s
const feed = new SessionFeed(() => (me ? loadSessions().catch(quietFail) : Promise.resolve()));
function refreshSessionsSoon() { feed.poke(); }

/** Background refreshes: a network failure shows on the state dot, not as a toast every poll. */
function quietFail(err) {
  if (err instanceof TypeError) { if (!view || !view.live.connected()) setConn('offline'); return; }
  fail(err);
}

ui.more.addEventListener('click', async () => {
  try {
    const data = await api('GET', `${listQuery()}&cursor=${encodeURIComponent(sessions.next)}`);
    const known = new Set(sessions.items.map((s) => s.id));
    sessions.items.push(...data.items.filter((s) => !known.has(s.id)));
    sessions.next = data.next_cursor;
    renderSessions();
  } catch (err) { fail(err); }
});

// "New chat" opens the start screen; the chat is created when its first message is sent.
ui.newSession.addEventListener('click', () => {
  setSidebar(false);
  if (location.hash !== '#/new') location.hash = '#/new';
  else route();
  ui.input.focus();
});

ui.menu.addEventListener('click', () => setSidebar(!ui.sidebar.classList.contains('open')));
ui.scrim.addEventListener('click', () => setSidebar(false));
function setSidebar(open) {
  ui.sidebar.classList.toggle('open', open);
  ui.scrim.hidden = !open;
  ui.menu.setAttribute('aria-expanded', String(open));
}
ui.list.addEventListener('click', (ev) => { if (ev.target.closest('a')) setSidebar(false); });

// ------------------------------------------------------------------ the chat view

const messageActions = {
  regenerate(m) {
    if (!view) return;
    const model = chosenModel();
    view.stream(`${view.base}/messages/${encodeURIComponent(m.id)}/regenerate`, model ? { model } : undefined).catch(fail);
  },
  copy(m) {
    copyText(m.content).then(() => toast('Copied as Markdown.')).catch(() => toast('Copying is not allowed here.'));
  },
  stop(m) {
    if (!view) return;
    api('POST', `${view.base}/messages/${encodeURIComponent(m.id)}/cancel`).then((x) => view && view.upsert(x)).catch(fail);
  },
  edit(m) {
    const li = document.getElementById(`m-${m.id}`);
    if (!li || !view) return;
    const v = view;
    const { form, area } = editor(
      m,
      (text) => { form.remove(); v.renderMessage(m.id); v.sendMessage(text, m.parent_id ?? null).catch(fail); },
      () => { form.remove(); v.renderMessage(m.id); },
    );
    li.querySelector('.body').hidden = true;
    li.querySelector('.actions')?.remove();
    li.append(form);
    area.focus();
  },
  async switchTo(m, step) {
    if (!view) return;
    const v = view;
    try {
      const data = await api('GET', `${v.base}/messages/${encodeURIComponent(m.id)}/siblings`);
      const items = data.items;
      let i = m.siblings.index + step;
      while (i >= 0 && i < items.length && items[i].deleted) i += step;
      if (i < 0 || i >= items.length) return;
      const s = await api('PATCH', v.base, { active_leaf_id: items[i].id });
      v.session = s;
      v.structural += 1;
      await v.reload();
      document.querySelector(`#m-${CSS.escape(items[i].id)} .switcher .${step < 0 ? 'prev' : 'next'}`)?.focus();
    } catch (err) { fail(err); }
  },
};

/** What a ChatView needs from the page around it (see chat.js). */
const chatHost = {
  ui, toast, fail, setConn, patchSession, chosenModel,
  actions: messageActions,
  isCurrent: (v) => view === v,
  // a server with the list feed titles chats itself after the first reply (issue 23)
  serverTitles: () => Boolean(features.user_events),
  gone(v) {
    sessions.items = sessions.items.filter((s) => s.id !== v.sid);
    closeView();
    renderSessions();
    history.replaceState(null, '', '#/');
  },
  changed() { refreshSessionsSoon(); feed.announce(); },
  filesChanged: (v) => renderChips(v),
};

// ------------------------------------------------------------------ composer

/** Copy text to the clipboard (the async API, or a hidden textarea where it is missing). */
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); return; }
  const area = el('textarea', { class: 'sr-only', 'aria-hidden': 'true' });
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand('copy');
  area.remove();
  if (!ok) throw new Error('copy refused');
}

ui.messages.addEventListener('click', (ev) => {
  const btn = ev.target.closest('.copy-code');
  if (!btn) return;
  const code = btn.closest('.code-block')?.querySelector('pre code');
  if (!code) return;
  copyText(code.textContent).then(() => {
    btn.lastChild.textContent = 'Copied';
    setTimeout(() => { btn.lastChild.textContent = 'Copy'; }, 1500);
  }).catch(() => toast('Copying is not allowed here.'));
});

function chosenModel() {
  if (!models || ui.model.hidden) return null;
  const id = ui.model.value;
  return id && id !== models.default ? id : null;
}

function growInput() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

let creating = false;
/** On the start screen: make the chat (titled after the message), open it, then send. */
async function startChat(text) {
  if (creating) return;
  creating = true;
  try {
    // untitled: the server titles the chat after its first reply (title_source "auto")
    const s = await api('POST', '/api/sessions', features.user_events ? {} : { title: titleFrom(text) });
    sessions.items.unshift(s);
    history.pushState(null, '', `#/s/${encodeURIComponent(s.id)}`);
    openSession(s.id);
    const v = view;
    await v.whenReady();
    if (v.closed) return;
    v.session = s;
    await v.sendMessage(text);
  } finally {
    creating = false;
  }
}

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || creating) return;
  ui.input.value = '';
  growInput();
  const sending = view ? view.sendMessage(text) : startChat(text);
  sending.catch((err) => {
    fail(err);
    if (!ui.input.value) { ui.input.value = text; growInput(); }
  });
});
ui.input.addEventListener('input', growInput);
ui.input.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  } else if (ev.key === 'ArrowUp' && !ui.input.value && view) {
    // Up in an empty box edits your last message
    const last = [...view.path].reverse().map((id) => view.byId.get(id)).find((m) => m && m.role === 'user' && !m.deleted);
    if (last) { ev.preventDefault(); messageActions.edit(last); }
  }
});
function stopReplies() {
  if (view) for (const m of view.running()) messageActions.stop(m);
}
ui.stop.addEventListener('click', stopReplies);

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

document.addEventListener('keydown', (ev) => {
  if (ev.defaultPrevented || ev.isComposing) return;
  if (ev.key === 'Escape') {
    if (!ui.chatMenu.hidden) { setMenu(false); ui.menuButton.focus(); return; }
    if (ui.sidebar.classList.contains('open')) { setSidebar(false); ui.menu.focus(); return; }
    if (!ui.searchForm.hidden && document.activeElement === ui.searchInput) { setSearch(false); return; }
    if (view && view.running().length && !ev.target.closest?.('form.edit, dialog')) { ev.preventDefault(); stopReplies(); }
    return;
  }
  if (ev.key === '/' && !typing(ev.target) && !ev.ctrlKey && !ev.metaKey && !ev.altKey && view && features.search) {
    ev.preventDefault();
    setSearch(true);
  }
});

// the chat header's overflow menu and the search toggle
function setMenu(open) {
  if (open) labelOrganise(view && view.session);
  ui.chatMenu.hidden = !open;
  ui.menuButton.setAttribute('aria-expanded', String(open));
  if (open) ui.chatMenu.querySelector('[role=menuitem]:not([hidden])')?.focus();
}
ui.menuButton.addEventListener('click', () => setMenu(ui.chatMenu.hidden));
ui.chatMenu.addEventListener('click', (ev) => { if (ev.target.closest('[role=menuitem]')) setMenu(false); });
document.addEventListener('click', (ev) => {
  if (!ui.chatMenu.hidden && !ev.target.closest('.menu-wrap')) setMenu(false);
});
ui.chatMenu.addEventListener('keydown', (ev) => {
  if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
  ev.preventDefault();
  const items = [...ui.chatMenu.querySelectorAll('[role=menuitem]:not([hidden])')];
  const i = items.indexOf(document.activeElement);
  items[(i + (ev.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length]?.focus();
});

function setSearch(open) {
  ui.searchForm.hidden = !open;
  ui.searchToggle.setAttribute('aria-expanded', String(open));
  if (open) { ui.searchInput.focus(); ui.searchInput.select(); } else { ui.results.hidden = true; ui.searchToggle.focus(); }
}
ui.searchToggle.addEventListener('click', () => setSearch(ui.searchForm.hidden));
ui.searchInput.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { ev.preventDefault(); setSearch(false); } });

ui.log.addEventListener('scroll', () => {
  if (view && ui.log.scrollTop < 300) view.loadOlder().catch(fail);
}, { passive: true });
ui.older.addEventListener('click', () => view && view.loadOlder().catch(fail));

// attachments
function renderChips(v) {
  ui.chips.replaceChildren(...v.pendingFiles.map((f) => el(
    'li', {}, f.name,
    el('button', {
      type: 'button', 'aria-label': `Remove ${f.name}`,
      onclick: () => { v.pendingFiles = v.pendingFiles.filter((x) => x !== f); renderChips(v); },
    }, '×'),
  )));
}
ui.attachInput.addEventListener('change', async () => {
  const v = view;
  if (!v) return;
  const files = [...ui.attachInput.files];
  ui.attachInput.value = '';
  for (const file of files) {
    try {
      const form = new FormData();
      form.append('file', file, file.name);
      const a = await api('POST', `${v.base}/attachments`, form);
      v.pendingFiles.push(a);
      renderChips(v);
    } catch (err) { fail(err); }
  }
});

// rename / delete
ui.renameBtn.addEventListener('click', () => {
  if (!view || !view.session) return;
  ui.renameInput.value = view.session.title || '';
  ui.title.hidden = true;
  ui.renameForm.hidden = false;
  ui.renameInput.focus();
  ui.renameInput.select();
});
function endRename() {
  ui.renameForm.hidden = true;
  ui.title.hidden = false;
  ui.menuButton.focus();
}
ui.renameCancel.addEventListener('click', endRename);
ui.renameInput.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') endRename(); });
ui.renameForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const v = view;
  try {
    const s = await api('PATCH', v.base, { title: ui.renameInput.value.trim() || null });
    v.sessionUpdated(s);
    endRename();
    feed.announce();
  } catch (err) { fail(err); }
});
ui.deleteBtn.addEventListener('click', async () => {
  const v = view;
  if (!v || !confirm(`Delete “${sessionTitle(v.session || {})}”? This cannot be undone.`)) return;
  try {
    await api('DELETE', v.base);
    sessions.items = sessions.items.filter((s) => s.id !== v.sid);
    closeView();
    renderSessions();
    history.replaceState(null, '', '#/');
    feed.announce();
  } catch (err) { fail(err); }
});

// pin, archive, folder
async function organise(change) {
  const v = view;
  if (!v || !v.session) return;
  setMenu(false);
  try {
    const s = await api('PATCH', v.base, change);
    v.sessionUpdated(s);
    await loadSessions();
    feed.announce();
  } catch (err) { fail(err); }
}
ui.pinBtn.addEventListener('click', () => organise({ pinned: !(view && view.session && view.session.pinned) }));
ui.archiveBtn.addEventListener('click', () => organise({ archived: !(view && view.session && view.session.archived) }));
ui.folderBtn.addEventListener('click', () => {
  const current = (view && view.session && view.session.folder) || '';
  const name = prompt('Folder (like work/2026; empty for none)', current);
  if (name === null) return;
  organise({ folder: name.trim() || null });
});
ui.showArchived.addEventListener('click', async () => {
  showArchived = !showArchived;
  ui.showArchived.setAttribute('aria-pressed', String(showArchived));
  ui.showArchived.textContent = showArchived ? 'Show chats' : 'Show archived';
  try { await loadSessions(); } catch (err) { fail(err); }
});
/** The menu's words follow the open chat's state. */
function labelOrganise(s) {
  ui.pinBtn.textContent = s && s.pinned ? 'Unpin' : 'Pin';
  ui.archiveBtn.textContent = s && s.archived ? 'Unarchive' : 'Archive';
}

// search across every chat: a hit opens its chat on the hit's branch
ui.allSearchForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = ui.allSearchInput.value.trim();
  if (!q) { ui.allResults.hidden = true; return; }
  try {
    const data = await api('GET', `/api/search?q=${encodeURIComponent(q)}&limit=20`);
    ui.allList.replaceChildren(...data.items.map((hit) => el('li', {}, el(
      'button',
      { type: 'button', class: 'ghost', onclick: () => openHit(hit) },
      el('span', { class: 'title' }, sessionTitle({ title: hit.session_title })),
      el('span', { class: 'snippet' }, safeSnippet(String(hit.snippet ?? ''))),
    ))));
    ui.allSummary.textContent = `${data.items.length}${data.next_cursor ? '+' : ''} result${data.items.length === 1 ? '' : 's'} for “${q}”`;
    ui.allResults.hidden = false;
  } catch (err) { fail(err); }
});

async function openHit(hit) {
  try {
    // make the hit's branch the active one, then open the chat there
    await api('PATCH', `/api/sessions/${encodeURIComponent(hit.session_id)}`, { active_leaf_id: hit.message_id });
    setSidebar(false);
    closeView();
    history.pushState(null, '', `#/s/${encodeURIComponent(hit.session_id)}`);
    openSession(hit.session_id);
    const v = view;
    await v.whenReady();
    if (!v.closed) await jumpTo(v, { id: hit.message_id });
  } catch (err) { fail(err); }
}

// search
ui.searchForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const v = view;
  const q = ui.searchInput.value.trim();
  if (!v || !q) return;
  try {
    const data = await api('GET', `${v.base}/search?q=${encodeURIComponent(q)}`);
    ui.resultsList.replaceChildren(...data.items.map((hit) => el('li', {}, el(
      'button',
      { type: 'button', class: 'ghost', onclick: () => jumpTo(v, hit.message) },
      el('span', { class: 'who' }, hit.message.role === 'user' ? 'You' : 'Assistant'),
      el('span', { class: 'snippet' }, safeSnippet(String(hit.snippet ?? ''))),
    ))));
    ui.resultsSummary.textContent = `${data.items.length} result${data.items.length === 1 ? '' : 's'} for “${q}”`;
    ui.results.hidden = false;
  } catch (err) { fail(err); }
});
ui.resultsClose.addEventListener('click', () => { ui.results.hidden = true; ui.searchInput.focus(); });

async function jumpTo(v, m) {
  for (let i = 0; i < 200 && !v.path.includes(m.id) && v.before; i++) {
    if (!(await v.loadOlder())) break;
  }
  const li = document.getElementById(`m-${m.id}`);
  if (!li) { toast('That message is on another branch.'); return; }
  li.scrollIntoView({ block: 'center' });
  li.classList.add('flash');
  li.tabIndex = -1;
  li.focus();
  setTimeout(() => li.classList.remove('flash'), 2000);
}

// ------------------------------------------------------------------ features, routing

/** Who is asking and what this server offers, from one call (no probing with bad requests). */
async function loadCapabilities() {
  me = await api('GET', '/api/capabilities');
  Object.assign(features, {
    search: me.features.search, export: me.features.export, attachments: me.features.attachments,
    user_events: me.features.user_events, search_all: me.features.search_all,
  });
  ui.account.hidden = me.auth !== 'tokens';
  ui.accountUser.textContent = me.user ? `Signed in as ${me.user}` : '';
  applyFeatures();
}

function applyFeatures() {
  ui.searchToggle.hidden = !features.search;
  ui.allSearchForm.hidden = !features.search_all; // not yet in cluster mode
  if (!features.search) ui.searchForm.hidden = true;
  ui.exportJson.hidden = ui.exportMd.hidden = !features.export;
  ui.attachLabel.hidden = !features.attachments || !view; // files belong to a chat
}

async function loadModels() {
  models = await api('GET', '/api/models');
  const saved = localStorage.getItem(MODEL_KEY);
  ui.model.replaceChildren(...models.models.map((m) => el(
    'option', { value: m.id, selected: m.id === (saved || models.default) }, m.role === 'fallback' ? `${m.id} (fallback)` : m.id,
  )));
  if (!models.models.some((m) => m.id === saved)) ui.model.value = models.default;
  ui.model.disabled = models.models.length < 2;
  ui.model.title = models.models.length < 2 ? 'The only model this server offers' : 'Model for the next reply';
  ui.model.hidden = false;
}
ui.model.addEventListener('change', () => localStorage.setItem(MODEL_KEY, ui.model.value));

ui.signOut.addEventListener('click', async () => {
  try {
    await api('POST', '/api/logout');
  } catch (err) { fail(err); return; }
  me = null;
  sessions = { items: [], next: null };
  closeView();
  renderSessions();
  history.replaceState(null, '', '#/');
  ui.account.hidden = true;
  ui.loginError.textContent = '';
  ui.login.showModal();
  ui.loginToken.focus();
});

function closeView() {
  if (view) view.close();
  view = null;
  ui.view.hidden = true;
  ui.empty.hidden = false;
  ui.results.hidden = true;
  ui.searchForm.hidden = true;
  ui.chatMenu.hidden = true;
  ui.stop.hidden = true;
  ui.send.hidden = false;
  ui.chips.replaceChildren();
  ui.attachLabel.hidden = true;
  document.title = 'Roost';
  setConn('idle');
}

function openSession(sid) {
  if (view && view.sid === sid) return;
  closeView();
  view = new ChatView(sid, chatHost);
  ui.view.hidden = false;
  ui.empty.hidden = true;
  ui.messages.replaceChildren();
  ui.chips.replaceChildren();
  ui.title.textContent = '…';
  ui.historyStatus.textContent = '';
  ui.older.hidden = true;
  ui.searchInput.value = '';
  renderSessions();
  applyFeatures();
  view.start();
}

function route() {
  const m = /^#\/s\/(.+)$/.exec(location.hash);
  if (m) openSession(decodeURIComponent(m[1]));
  else { closeView(); renderSessions(); }
}

/** Load what the page needs (after sign-in too); idempotent. */
async function boot() {
  await loadCapabilities();
  if (features.user_events) feed.follow('/api/events');
  await Promise.all([loadSessions(), loadModels().catch(fail)]);
  route();
}

window.addEventListener('hashchange', route);
window.roost = { get view() { return view; }, features, get me() { return me; } }; // for tests and debugging

fillIcons();
feed.start();
boot().catch(fail);
