// Keeping the chat list true: where news about other chats comes from.
//
// Today: GET /api/sessions when the tab gains focus or becomes visible, every
// POLL_MS while it is visible, and at once when another tab of this browser
// says it changed something (BroadcastChannel). The open chat's own counts
// come from its WebSocket (app.js). When the server grows a per-user list
// feed (GET /api/events, capabilities.features.user_events), replace
// ``SessionFeed.start`` with a subscription to it: nothing else changes.

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

  /** Tell this browser's other tabs that the list changed (a create, rename, delete, send). */
  announce() {
    if (this.channel) this.channel.postMessage('changed');
  }
}
