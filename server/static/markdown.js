// Markdown for replies: marked (GFM) → DOMPurify → DOM, rendered incrementally.
//
// Safety: raw HTML in the Markdown is shown as text (the renderer escapes it),
// images become links (the CSP would block other hosts' images anyway), and
// DOMPurify then removes anything executable and every URL that is not http(s),
// mailto, a same-origin path or a #fragment.
//
// Streaming: a reply is cut into blocks at blank lines (outside code fences).
// Blocks before the last cut are rendered once and kept; only the unfinished
// tail after it is rendered again on each delta, so a long reply costs about
// the same per delta at word 20,000 as at word 20.

import { Marked } from './vendor/marked.js';
import DOMPurify from './vendor/purify.js';
import hljs from './vendor/highlight.js';

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text, block }) {
      const t = escapeHtml(text.replace(/\n+$/, ''));
      return block ? `<p>${t}</p>` : t;
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
    code({ text, lang }) {
      const name = (lang || '').trim().split(/\s+/)[0].toLowerCase();
      const known = name && hljs.getLanguage(name);
      const body = known ? hljs.highlight(text, { language: name, ignoreIllegals: true }).value : escapeHtml(text);
      const cls = known ? ` class="hljs language-${escapeHtml(name)}"` : ' class="hljs"';
      return `<pre data-lang="${escapeHtml(name)}"><code${cls}>${body}</code></pre>`;
    },
  },
});

const SAFE_URL = /^(?:https?:|mailto:|#|\/(?!\/)|\.{0,2}\/)/i;
const PURIFY = {
  ALLOWED_URI_REGEXP: SAFE_URL,
  FORBID_TAGS: ['img', 'style', 'form', 'svg', 'math', 'iframe', 'object', 'embed', 'video', 'audio', 'button', 'textarea', 'select'],
  FORBID_ATTR: ['style', 'srcset'],
  RETURN_DOM_FRAGMENT: true,
};
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

const COPY_ICON = 'M8 8h11v12H8zM5 16V4h11';

function copyButton() {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'ghost copy-code';
  b.setAttribute('aria-label', 'Copy code');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', COPY_ICON);
  svg.append(path);
  b.append(svg, document.createTextNode('Copy'));
  return b;
}

/** Markdown source → a sanitised DocumentFragment (code blocks get a copy button). */
export function renderMarkdown(src) {
  const html = marked.parse(src).trim();
  const frag = DOMPurify.sanitize(html, PURIFY);
  for (const pre of frag.querySelectorAll('pre')) {
    const box = document.createElement('div');
    box.className = 'code-block';
    const bar = document.createElement('div');
    bar.className = 'code-bar';
    const lang = document.createElement('span');
    lang.textContent = pre.dataset.lang || 'text';
    bar.append(lang, copyButton());
    pre.replaceWith(box);
    box.append(bar, pre);
  }
  // whitespace between blocks is not text the reader sees
  for (const n of [...frag.childNodes]) if (n.nodeType === Node.TEXT_NODE && !n.textContent.trim()) n.remove();
  return frag;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})/;

/**
 * One message body that follows a growing Markdown text.
 * ``update(text, final)`` is idempotent for the same text; a text that does not
 * extend the kept blocks (an edit, a reset) re-renders from scratch.
 * ``renders`` counts block renders (for the performance test).
 */
export class MarkdownView {
  constructor(root) {
    this.root = root;
    this.reset();
  }

  reset() {
    this.root.replaceChildren();
    this.text = '';
    this.kept = 0; // chars rendered into kept blocks
    this.pos = 0; // scanner: start of the next unread line
    this.fence = null; // the open fence's marker, or null
    this.fenceAtMargin = false;
    this.pendingCut = null; // after a blank line: cut here unless an indented line follows
    this.tail = null;
    this.tailText = null;
    this.renders = 0;
  }

  update(text, final = false) {
    if (text === this.text && !final) return;
    if (!text.startsWith(this.text.slice(0, this.pos))) this.reset();
    this.text = text;
    let cut = this.kept;
    for (;;) {
      const nl = text.indexOf('\n', this.pos);
      if (nl < 0) break;
      const line = text.slice(this.pos, nl);
      const start = this.pos;
      this.pos = nl + 1;
      if (this.fence) {
        const m = FENCE.exec(line);
        if (m && m[1][0] === this.fence[0] && m[1].length >= this.fence.length && !line.slice(m[0].length).trim()) {
          this.fence = null;
          if (this.fenceAtMargin) cut = this.pos;
        }
        continue;
      }
      if (!line.trim()) { this.pendingCut ??= this.pos; continue; }
      if (this.pendingCut !== null && !/^[ \t]/.test(line)) cut = start;
      this.pendingCut = null;
      const m = FENCE.exec(line);
      if (m) { this.fence = m[1]; this.fenceAtMargin = !/^\s/.test(line); }
    }
    if (final) cut = text.length;
    if (cut > this.kept) {
      this.dropTail();
      const block = document.createElement('div');
      block.className = 'md-block';
      block.append(renderMarkdown(text.slice(this.kept, cut)));
      this.renders += 1;
      this.root.append(block);
      this.kept = cut;
    }
    const rest = text.slice(this.kept);
    if (!rest.trim()) { this.dropTail(); return; }
    if (rest === this.tailText) return;
    if (!this.tail) {
      this.tail = document.createElement('div');
      this.tail.className = 'md-block md-tail';
      this.root.append(this.tail);
    }
    this.tail.replaceChildren(renderMarkdown(rest));
    this.tailText = rest;
    this.renders += 1;
  }

  dropTail() {
    if (this.tail) this.tail.remove();
    this.tail = null;
    this.tailText = null;
  }
}
