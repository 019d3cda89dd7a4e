// One open chat: its model and its part of the page.
//
// The model is a map of known messages plus the loaded part of the active
// branch (``path``, oldest first), fed by HTTP pages, the chat's own SSE
// replies and its WebSocket; every update is idempotent, so the same change
// arriving over SSE and over the socket is applied once. Assistant replies are
// Markdown (one MarkdownView per message, kept across rebuilds of its <li>).
//
// ``host`` (from app.js) is the page around the chat: ``ui`` (its elements),
// ``toast(text)``, ``fail(err)``, ``setConn(state)``, ``isCurrent(view)``,
// ``patchSession(sid, change)`` (update the listed chat), ``gone(view)`` (the
// chat no longer exists), ``changed()`` (the chat list may have changed),
// ``filesChanged(view)``, ``chosenModel()`` and ``actions`` (the message buttons).

import { api, ApiError, newClientId, postStream, sessionPath } from './api.js';
import { LiveSocket } from './live.js';
import { MarkdownView } from './markdown.js';
import { sessionTitle, titleFrom, untitled } from './titles.js';
import { el, messageItem, UNFINISHED } from './view.js';

const PAGE = 50;
const cp = (s) => [...s];

export class ChatView {
  /** ``host``: what the page around the chat provides; see the module comment. */
  constructor(sid, host) {
    this.sid = sid;
    this.host = host;
    this.ui = host.ui;
    this.base = sessionPath(sid);
    this.session = null;
    this.byId = new Map();
    this.path = []; // ids on the active branch, oldest first (the loaded part)
    this.before = null;
    this.lastSeq = null; // last applied durable event seq
    this.ready = false; // the first page is in
    this.queue = []; // frames that came before it
    this.structural = 0; // counts branch-shaping events (for reload races)
    this.reloading = null;
    this.reloadTimer = null;
    this.loadingOlder = false;
    this.busy = 0; // own requests in flight that change the tree
    this.pendingFiles = [];
    this.closed = false;
    this.md = new Map(); // assistant message id → MarkdownView (kept across rebuilds of its <li>)
    this.readyWaiters = [];
    this.live = new LiveSocket(sid, {
      since: () => (this.ready ? this.lastSeq : null),
      onFrame: (f) => this.onFrame(f),
      onState: (s) => { if (!this.closed) host.setConn(s); },
      onGone: () => this.gone(),
      onRefused: () => this.checkExists(),
    });
  }

  start() { this.live.start(); }

  /** Resolves once the first page is in (at once if it is). */
  whenReady() {
    return this.ready ? Promise.resolve() : new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  close() {
    this.closed = true;
    for (const resolve of this.readyWaiters) resolve();
    this.live.close();
    clearTimeout(this.reloadTimer);
  }

  nearBottom() {
    const l = this.ui.log;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }

  tail() { return this.path.length ? this.path[this.path.length - 1] : null; }

  // ---- frames from the socket

  onFrame(f) {
    if (this.closed) return;
    if (f.type === 'hello') {
      if (!this.ready) {
        // first connection (or a reconnect before the first page came in): start from here
        this.lastSeq = f.seq;
        this.queue = [];
        if (this.loading) this.loadAgain = true;
        else this.firstLoad().catch(this.host.fail);
      }
      return;
    }
    if (!this.ready) { this.queue.push(f); return; }
    this.apply(f);
  }

  apply(f) {
    if (typeof f.seq === 'number' && f.type !== 'resync') {
      if (f.seq <= this.lastSeq) return; // already applied
      this.lastSeq = f.seq;
    }
    switch (f.type) {
      case 'message.created': this.created(f.message); break;
      case 'message.updated': this.upsert(f.message); break;
      case 'message.delta': this.delta(f.message_id, f.offset, f.text); break;
      case 'message.deleted': this.deleted(f.message_id); break;
      case 'session.updated': this.sessionUpdated(f.session); break;
      case 'session.deleted': this.gone(); break;
      case 'resync': this.lastSeq = f.seq; this.scheduleReload(0); break;
      case 'error': this.host.toast(f.message || 'error'); break;
      default: break;
    }
  }

  async firstLoad() {
    this.loading = true;
    let data;
    try {
      do {
        this.loadAgain = false;
        data = await api('GET', `${this.base}?limit=${PAGE}`);
      } while (this.loadAgain && !this.closed);
    } finally {
      this.loading = false;
    }
    if (this.closed) return;
    this.session = data.session;
    this.setPath(data.messages, data.before);
    this.renderHead();
    this.ready = true;
    for (const resolve of this.readyWaiters.splice(0)) resolve();
    const queued = this.queue;
    this.queue = [];
    for (const f of queued) this.apply(f);
    this.scrollToBottom();
    this.fillViewport();
  }

  // ---- the model

  /** Store a message unless we hold a newer version; keep streamed text ahead of a commit. */
  upsert(m) {
    const old = this.byId.get(m.id);
    if (old) {
      if (m.version < old.version) {
        if (m.siblings) old.siblings = m.siblings; // branch info is as fresh as the page
        if (this.path.includes(m.id)) this.renderMessage(m.id);
        return old;
      }
      if (!m.siblings && old.siblings) m = { ...m, siblings: old.siblings };
      if (UNFINISHED.has(m.status) && old.content.length > m.content.length && old.content.startsWith(m.content)) {
        m = { ...m, content: old.content };
      }
    }
    this.byId.set(m.id, m);
    if (this.path.includes(m.id)) this.renderMessage(m.id);
    this.renderComposer();
    return m;
  }

  created(m) {
    const known = this.byId.has(m.id);
    if (!known && this.ready) {
      this.host.patchSession(this.sid, (s) => { s.message_count += 1; s.updated_at = s.last_message_at = m.created_at; });
    }
    this.upsert(m);
    if (this.path.includes(m.id)) return;
    const tail = this.tail();
    const continues = tail ? m.parent_id === tail : m.parent_id == null && this.before == null && !known;
    if (continues) {
      const stored = this.byId.get(m.id);
      if (!stored.siblings) stored.siblings = { index: 0, count: 1 };
      const stick = this.nearBottom();
      this.path.push(m.id);
      this.ui.messages.append(this.item(stored));
      if (stick) this.scrollToBottom();
      this.renderComposer();
    } else {
      this.structural += 1;
      this.scheduleReload();
    }
    if (this.session) this.session.active_leaf_id = m.id;
  }

  delta(mid, offset, text) {
    const m = this.byId.get(mid);
    if (!m || !UNFINISHED.has(m.status)) return; // unknown yet, or final text is in
    const have = cp(m.content);
    if (offset > have.length) { this.refetch(mid); return; } // a gap: ask for the committed text
    const add = cp(text);
    if (offset + add.length <= have.length) return; // seen already
    m.content = have.join('') + add.slice(have.length - offset).join('');
    if (m.status === 'pending') { m.status = 'streaming'; this.renderMessage(mid); return; }
    const li = document.getElementById(`m-${mid}`);
    if (li) {
      const stick = this.nearBottom();
      const md = this.md.get(mid);
      if (md) md.update(m.content);
      else li.querySelector('.body').textContent = m.content;
      if (stick) this.scrollToBottom();
    }
  }

  async refetch(mid) {
    try {
      const m = await api('GET', `${this.base}/messages/${encodeURIComponent(mid)}`);
      if (!this.closed) this.upsert(m);
    } catch (err) { this.host.fail(err); }
  }

  deleted(mid) {
    const m = this.byId.get(mid);
    if (m && !m.deleted) this.host.patchSession(this.sid, (s) => { s.message_count = Math.max(0, s.message_count - 1); });
    if (m) this.byId.set(mid, { ...m, deleted: true, content: '' });
    if (this.path.includes(mid)) this.renderMessage(mid);
  }

  sessionUpdated(s) {
    this.host.patchSession(s.id, (x) => Object.assign(x, s));
    const leafChanged = this.session && s.active_leaf_id !== this.tail();
    this.session = s;
    this.renderHead();
    if (leafChanged) { this.structural += 1; this.scheduleReload(); }
  }

  /** The socket was refused: if the chat does not exist (or is not ours), say so. */
  async checkExists() {
    if (this.closed || this.checking) return;
    this.checking = true;
    try {
      await api('GET', `${this.base}?limit=1`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) this.gone('This chat does not exist.');
    } finally {
      this.checking = false;
    }
  }

  gone(message = 'This chat was deleted.') {
    if (this.closed) return;
    this.host.toast(message);
    this.host.gone(this);
  }

  setPath(items, before) {
    for (const m of items) this.upsert(m);
    this.path = items.map((m) => m.id);
    this.before = before;
    this.ui.messages.replaceChildren(...this.path.map((id) => this.item(this.byId.get(id))));
    this.renderHistory();
    this.renderComposer();
  }

  scheduleReload(delay = 30) {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.reload().catch(this.host.fail), delay);
  }

  /** Refetch the newest page of the active branch; again if the tree changed meanwhile. */
  async reload() {
    if (this.reloading) { this.reloadAgain = true; return; }
    this.reloading = true;
    try {
      for (let i = 0; i < 4; i++) {
        this.reloadAgain = false;
        const mark = this.structural;
        const data = await api('GET', `${this.base}?limit=${PAGE}`);
        if (this.closed) return;
        const stick = this.nearBottom();
        this.session = data.session;
        this.setPath(data.messages, data.before);
        this.renderHead();
        if (stick) this.scrollToBottom();
        if (this.structural === mark && !this.reloadAgain) break;
      }
    } finally {
      this.reloading = false;
    }
  }

  async loadOlder() {
    if (!this.before || this.loadingOlder || !this.ready) return false;
    this.loadingOlder = true;
    this.ui.historyStatus.textContent = 'Loading older messages…';
    try {
      const cursor = this.before;
      const data = await api('GET', `${this.base}/messages?limit=${PAGE}&before=${encodeURIComponent(cursor)}`);
      if (this.closed || cursor !== this.before) return false;
      const fresh = data.items.filter((m) => !this.path.includes(m.id));
      for (const m of fresh) this.upsert(m);
      const height = this.ui.log.scrollHeight;
      const top = this.ui.log.scrollTop;
      this.path.unshift(...fresh.map((m) => m.id));
      this.ui.messages.prepend(...fresh.map((m) => this.item(this.byId.get(m.id))));
      this.ui.log.scrollTop = top + (this.ui.log.scrollHeight - height);
      this.before = data.before;
      return true;
    } finally {
      this.loadingOlder = false;
      this.renderHistory();
    }
  }

  /** Load older pages until the log can scroll (or there are none). */
  async fillViewport() {
    for (let i = 0; i < 20 && this.before && this.ui.log.scrollHeight <= this.ui.log.clientHeight + 200; i++) {
      if (!(await this.loadOlder())) break;
    }
  }

  // ---- rendering

  item(m) {
    let body = null;
    if (m.role === 'assistant' && !m.deleted) {
      let md = this.md.get(m.id);
      if (!md) {
        md = new MarkdownView(el('div', { class: 'body markdown' }));
        this.md.set(m.id, md);
      }
      md.update(m.content, !UNFINISHED.has(m.status));
      body = md.root;
    }
    return messageItem(m, this.host.actions, { busy: this.busy > 0, body });
  }

  renderMessage(id) {
    const li = document.getElementById(`m-${id}`);
    const m = this.byId.get(id);
    if (!li || !m) return;
    if (li.querySelector('form.edit')) return; // do not clobber an open editor
    const stick = this.nearBottom();
    li.replaceWith(this.item(m));
    if (stick) this.scrollToBottom();
  }

  renderAll() {
    for (const id of this.path) this.renderMessage(id);
  }

  renderHead() {
    const title = this.session ? sessionTitle(this.session) : '…';
    this.ui.title.textContent = title;
    document.title = `${title} · Roost`;
    const slug = title.replace(/[^\w.-]+/g, '_').slice(0, 60) || 'chat';
    this.ui.exportJson.href = `${this.base}/export?format=json`;
    this.ui.exportJson.download = `${slug}.json`;
    this.ui.exportMd.href = `${this.base}/export?format=markdown`;
    this.ui.exportMd.download = `${slug}.md`;
  }

  renderHistory() {
    this.ui.older.hidden = !this.before;
    this.ui.historyStatus.textContent = this.before || !this.path.length ? '' : 'Start of the chat';
  }

  running() {
    return this.path.map((id) => this.byId.get(id)).filter((m) => m && m.role === 'assistant' && UNFINISHED.has(m.status));
  }

  renderComposer() {
    if (!this.host.isCurrent(this)) return;
    const running = this.running().length > 0;
    this.ui.stop.hidden = !running;
    this.ui.send.hidden = running;
  }

  scrollToBottom() { this.ui.log.scrollTop = this.ui.log.scrollHeight; }

  // ---- actions

  /** Run a tree-changing SSE request (chat, regenerate); the model follows its events. */
  async stream(path, body) {
    this.busy += 1;
    this.renderAll();
    try {
      await postStream(path, body, (name, data) => {
        if (this.closed) return;
        if (name === 'ack') {
          if (data.user_message) this.created(data.user_message);
          if (data.assistant_message) this.created(data.assistant_message);
        } else if (name === 'delta') {
          this.delta(data.message_id, data.offset, data.text);
        } else if (name === 'message') {
          this.upsert(data);
        } else if (name === 'error') {
          this.host.toast(data.message || 'The reply failed.');
        }
      });
    } finally {
      this.busy -= 1;
      if (!this.closed) this.renderAll();
      this.host.changed();
    }
  }

  async sendMessage(content, parentId) {
    const body = { content, client_id: newClientId() };
    const model = this.host.chosenModel();
    if (model) body.model = model;
    if (!this.path.length && parentId === undefined && untitled(this.session) && !this.host.serverTitles()) {
      // a server without auto-titles: name the chat after its first message, once
      api('PATCH', this.base, { title: titleFrom(content) }).then((s) => this.sessionUpdated(s)).catch(this.host.fail);
    }
    if (parentId !== undefined) body.parent_id = parentId;
    if (this.pendingFiles.length) body.attachments = this.pendingFiles.map((f) => f.id);
    this.pendingFiles = [];
    this.host.filesChanged(this);
    this.scrollToBottom();
    await this.stream(`${this.base}/chat`, body);
    this.host.changed();
  }
}
