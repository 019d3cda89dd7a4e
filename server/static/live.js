// One session's live feed over the WebSocket: reconnects with backoff and ?since=.

const MIN_DELAY = 500;
const MAX_DELAY = 10000;

/**
 * ``new LiveSocket(sid, handlers)`` then ``start()``; ``close()`` ends it for good.
 * handlers: ``since()`` → the last applied event seq or null (first connect),
 * ``onFrame(frame)``, ``onState(state)`` with state one of
 * connecting | connected | reconnecting | offline (the network is down, or two
 * reconnects in a row failed: the server cannot be reached), ``onGone(code)`` when the
 * session no longer exists (close code 4004), and ``onRefused()`` (optional)
 * when a connection closed before its ``hello``, e.g. an upgrade answered 404.
 */
export class LiveSocket {
  constructor(sid, handlers) {
    this.sid = sid;
    this.h = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.closed = false;
    this.onOnline = () => this.retryNow();
    // The network is gone: this socket is as good as dead; reconnect (with since) when back.
    this.onOffline = () => this.drop();
    window.addEventListener('online', this.onOnline);
    window.addEventListener('offline', this.onOffline);
  }

  url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const since = this.h.since();
    const query = since == null ? '' : `?since=${since}`;
    return `${proto}//${location.host}/api/sessions/${encodeURIComponent(this.sid)}/ws${query}`;
  }

  start() {
    if (this.closed) return;
    this.h.onState(this.attempt ? this.waiting() : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url(), 'roost.v1');
    } catch {
      this.schedule();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (ws !== this.ws || typeof ev.data !== 'string' || ev.data === 'pong') return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === 'hello') {
        ws.helloSeen = true;
        this.attempt = 0;
        this.h.onState('connected');
      }
      this.h.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.closed) return;
      if (ev.code === 4004) {
        this.h.onState('offline');
        this.h.onGone(ev.code);
        return;
      }
      if (!ws.helloSeen && this.h.onRefused) this.h.onRefused();
      this.schedule();
    };
  }

  /** The state while no socket is up: offline once the network is gone or retries keep failing. */
  waiting() {
    return navigator.onLine === false || this.attempt >= 2 ? 'offline' : 'reconnecting';
  }

  /** Whether a socket is open now. */
  connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  schedule() {
    if (this.closed || this.timer) return;
    this.h.onState(this.waiting());
    const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.start();
    }, delay);
  }

  drop() {
    if (this.closed) return;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(4000, 'offline');
    this.schedule();
  }

  retryNow() {
    if (this.closed || this.ws) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.start();
  }

  /** Send a client frame if connected; returns whether it was sent. */
  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** Stop for good (idempotent). */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('offline', this.onOffline);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'bye');
    }
  }
}
