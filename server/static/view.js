// DOM helpers. User content is only ever set with textContent; the HTML inputs
// are a search snippet (safeSnippet keeps <mark> only) and an assistant reply's
// Markdown (markdown.js: sanitised by DOMPurify, raw HTML shown as text).

import { icon } from './icons.js';

export const UNFINISHED = new Set(['pending', 'streaming']);

/** ``el('button', {class: 'x', onclick: fn}, 'text', child)``. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

/** A search snippet (HTML) as nodes: text stays text, only <mark> survives. */
export function safeSnippet(html) {
  const doc = new DOMParser().parseFromString(`<body>${html}</body>`, 'text/html');
  const frag = document.createDocumentFragment();
  const walk = (node, into) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        into.append(document.createTextNode(child.textContent));
      } else if (child.nodeType === Node.ELEMENT_NODE) {
        if (child.localName === 'mark') {
          const mark = document.createElement('mark');
          mark.textContent = child.textContent;
          into.append(mark);
        } else if (!['script', 'style', 'template'].includes(child.localName)) {
          walk(child, into);
        }
      }
    }
  };
  walk(doc.body, frag);
  return frag;
}

export function relativeTime(iso) {
  if (!iso) return '';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

const ROLE_NAMES = { user: 'You', assistant: 'Assistant', system: 'System', tool: 'Tool' };
const STATUS_TEXT = {
  pending: 'thinking…',
  streaming: 'writing…',
  cancelled: 'stopped',
  error: 'failed',
  interrupted: 'interrupted',
};

function sameOriginUrl(url) {
  return typeof url === 'string' && url.startsWith('/') && !url.startsWith('//');
}

function attachmentList(refs) {
  if (!Array.isArray(refs) || !refs.length) return null;
  const ul = el('ul', { class: 'attachments', 'aria-label': 'Attachments' });
  for (const a of refs) {
    const name = String(a.name || a.id || 'file');
    if (!sameOriginUrl(a.url)) {
      ul.append(el('li', {}, name));
      continue;
    }
    const link = el('a', { href: a.url, download: name, target: '_blank', rel: 'noopener' });
    if (typeof a.mime === 'string' && a.mime.startsWith('image/')) {
      link.append(el('img', { src: a.url, alt: name, loading: 'lazy' }));
    } else {
      link.append(icon('paperclip'), name);
    }
    ul.append(el('li', {}, link));
  }
  return ul;
}

function usageText(meta) {
  const u = meta && typeof meta === 'object' ? meta.usage : null;
  if (!u || typeof u !== 'object') return null;
  const total = Number(u.total_tokens ?? (Number(u.prompt_tokens ?? u.input_tokens ?? 0) + Number(u.completion_tokens ?? u.output_tokens ?? 0)));
  return Number.isFinite(total) && total > 0 ? `${total} tokens` : null;
}

function actionButton(cls, label, iconName, onclick, disabled = false) {
  return el('button', { type: 'button', class: `ghost act ${cls}`, 'aria-label': label, title: label, disabled, onclick }, icon(iconName), el('span', { class: 'act-label' }, label));
}

/**
 * A message's <li>, built fresh (cheap) from ``m``. ``actions`` holds callbacks:
 * regenerate(m), edit(m), stop(m), switchTo(m, step), copy(m). ``body``, when
 * given, is the element to show as the body (an assistant's rendered Markdown,
 * kept across rebuilds); otherwise the content is shown as plain text.
 */
export function messageItem(m, actions, { busy, body = null }) {
  const running = UNFINISHED.has(m.status);
  const li = el('li', {
    class: 'msg',
    id: `m-${m.id}`,
    dataset: { id: m.id, role: m.role, status: m.status, seq: m.seq },
    'aria-busy': running ? 'true' : null,
  });
  const meta = el('div', { class: 'meta' }, el('span', { class: 'role' }, ROLE_NAMES[m.role] || m.role));
  if (m.role === 'assistant' && m.model_id) meta.append(el('span', { class: 'model', title: 'The model that answered' }, m.model_id));
  const statusText = STATUS_TEXT[m.status];
  if (statusText) meta.append(el('span', { class: 'status', dataset: { kind: m.status } }, statusText));
  if (m.fallback_notice) meta.append(el('span', { class: 'notice', role: 'note' }, m.fallback_notice));
  const usage = usageText(m.metadata);
  if (usage) meta.append(el('span', { class: 'usage' }, usage));
  li.append(meta);
  if (body && !m.deleted) {
    li.append(body);
  } else {
    const plain = el('div', { class: 'body plain' });
    plain.textContent = m.deleted ? '(deleted)' : m.content;
    li.append(plain);
  }
  if (m.status === 'error' && m.error && m.error.message) {
    li.append(el('p', { class: 'error', role: 'note' }, String(m.error.message)));
  }
  const files = attachmentList(m.attachments);
  if (files) li.append(files);

  const bar = el('div', { class: 'actions' });
  const sib = m.siblings;
  if (sib && sib.count > 1) {
    const label = m.role === 'assistant' ? 'reply' : 'version';
    const prev = el('button', {
      type: 'button', class: 'ghost prev', 'aria-label': `Previous ${label}`,
      disabled: sib.index <= 0 || busy, onclick: () => actions.switchTo(m, -1),
    }, icon('prev'));
    const next = el('button', {
      type: 'button', class: 'ghost next', 'aria-label': `Next ${label}`,
      disabled: sib.index >= sib.count - 1 || busy, onclick: () => actions.switchTo(m, 1),
    }, icon('next'));
    bar.append(el(
      'div',
      { class: 'switcher', role: 'group', 'aria-label': `Switch ${label}` },
      prev, el('span', { class: 'pos', 'aria-live': 'polite' }, `${sib.index + 1}/${sib.count}`), next,
    ));
  }
  const tools = el('div', { class: 'tools' });
  if (!m.deleted && m.content) tools.append(actionButton('copy', 'Copy', 'copy', () => actions.copy(m)));
  if (running && m.role === 'assistant') {
    tools.append(actionButton('stop', 'Stop', 'stop', () => actions.stop(m)));
  } else if (m.role === 'assistant' && !m.deleted) {
    tools.append(actionButton('regenerate', 'Regenerate', 'regenerate', () => actions.regenerate(m), busy));
  } else if (m.role === 'user' && !m.deleted) {
    tools.append(actionButton('edit', 'Edit', 'edit', () => actions.edit(m), busy));
  }
  if (tools.childNodes.length) bar.append(tools);
  if (bar.childNodes.length) li.append(bar);
  return li;
}

/** The inline editor for edit-and-resend; resolves via onSave(text) / onCancel(). */
export function editor(m, onSave, onCancel) {
  const area = el('textarea', { 'aria-label': 'Edit message' });
  area.value = m.content;
  const form = el(
    'form',
    { class: 'edit' },
    area,
    el(
      'div',
      { class: 'row' },
      el('button', { type: 'button', class: 'ghost', onclick: onCancel }, 'Cancel'),
      el('button', { type: 'submit', class: 'primary' }, 'Send edit'),
    ),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (area.value.trim()) onSave(area.value);
  });
  area.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') onCancel();
  });
  return { form, area };
}
