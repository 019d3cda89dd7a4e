// Inline SVG icons (24x24 strokes), so no glyph depends on the system's fonts.

const NS = 'http://www.w3.org/2000/svg';

const PATHS = {
  menu: ['M4 6h16', 'M4 12h16', 'M4 18h16'],
  plus: ['M12 5v14', 'M5 12h14'],
  search: ['M11 4a7 7 0 1 0 0 14a7 7 0 1 0 0-14z', 'M20 20l-4-4'],
  more: ['M5 12h.01', 'M12 12h.01', 'M19 12h.01'],
  send: ['M4 12l16-8-6 16-3-7z', 'M11 13l9-9'],
  stop: ['M7 7h10v10H7z'],
  paperclip: ['M20 11l-8.5 8.5a5 5 0 0 1-7-7L13 4a3.5 3.5 0 0 1 5 5l-8.5 8.5a2 2 0 0 1-3-3L14 7'],
  copy: ['M8 8h11v12H8z', 'M5 16V4h11'],
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M13 7l4 4'],
  regenerate: ['M20 11a8 8 0 1 0-2.3 5.7', 'M20 4v7h-7'],
  prev: ['M15 5l-7 7 7 7'],
  next: ['M9 5l7 7-7 7'],
  logout: ['M15 4h4v16h-4', 'M10 8l-4 4 4 4', 'M6 12h10'],
  close: ['M6 6l12 12', 'M18 6L6 18'],
  trash: ['M4 7h16', 'M9 7V4h6v3', 'M6 7l1 13h10l1-13', 'M10 11v5', 'M14 11v5'],
  file: ['M6 3h8l4 4v14H6z', 'M14 3v4h4'],
  check: ['M5 12l5 5 9-10'],
};

/** A decorative ``<svg class="icon">`` (aria-hidden; label the control, not the icon). */
export function icon(name) {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon icon-${name}`);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const d of PATHS[name] || []) {
    const p = document.createElementNS(NS, 'path');
    p.setAttribute('d', d);
    svg.append(p);
  }
  return svg;
}

/** Fill every ``[data-icon]`` element under ``root`` with its icon (once). */
export function fillIcons(root = document) {
  for (const node of root.querySelectorAll('[data-icon]:not([data-icon-done])')) {
    node.prepend(icon(node.dataset.icon));
    node.dataset.iconDone = '';
  }
}
