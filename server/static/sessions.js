// Keeping the chat list true: where news about other chats comes from.
//
// GET /api/sessions when the tab gains focus or becomes visible, every POLL_MS
// while it is visible, and at once when another tab of this browser says it
// changed something (BroadcastChannel). With the server's per-user list feed
// (GET /api/events, capabilities.features.user_events; ``follow``), every
// session.created / updated / deleted from any tab or client reloads the list
// at once (a reconnect passes ``since``; a ``resync`` reloads too), and the
// poll only backs it up. The open chat's own counts come from its WebSocket.

export const POLL_MS = 12000;

export class SessionFeed {
  /** ``refresh()`` reloads the list (returns a promise); errors are the caller's to report. */
  constructor(refresh) {
    this.refresh = refresh;
    this.timer = null;
    this.soon = null;
    this.channel = 'BroadcastChannel' in window ? new BroadcastChannel('roost-sessions') : null;
  }

  start() {
    const wake = () => { if (document.visibilityState === 'visible') this.poke(); };
    window.addEventListener('focus', wake);
    document.addEventListener('visibilitychange', wake);
    if (this.channel) this.channel.onmessage = () => this.poke();
    this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (document.visibilityState === 'visible') this.poke(0);
      else this.schedule();
    }, POLL_MS);
  }

  /** Reload the list shortly (coalesced); the next poll is counted from then. */
  poke(delay = 250) {
    clearTimeout(this.soon);
    this.soon = setTimeout(() => {
      this.schedule();
      this.refresh();
    }, delay);
  }

  /** Follow the server's list feed at ``path`` (a WebSocket); reconnects with ``since``. */
  follow(path) {
    let since = null;
    let backoff = 500;
    const open = () => {
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const q = since === null ? '' : `?since=${since}`;
      const ws = new WebSocket(`${proto}//${location.host}${path}${q}`, ['roost.v1']);
      ws.onmessage = (ev) => {
        let f;
        try { f = JSON.parse(ev.data); } catch { return; }
        if (typeof f.seq === 'number') since = f.seq;
        if (f.type === 'hello') { backoff = 500; return; }
        this.poke(30);
      };
      ws.onclose = () => {
        setTimeout(open, backoff);
        backoff = Math.min(backoff * 2, 15000);
      };
    };
    open();
  }

  /** Tell this browser's other tabs that the list changed (a create, rename, delete, send). */
  announce() {
    if (this.channel) this.channel.postMessage('changed');
  }
}
