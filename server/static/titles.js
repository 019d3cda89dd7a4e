// Chat titles: what the list shows, and the title a chat gets from its first message.

export function sessionTitle(s) {
  return s.title && s.title.trim() ? s.title : 'Untitled chat';
}

/** Whether a chat still has no title of its own (the old page titled every chat "New chat"). */
export function untitled(s) {
  return !s || !s.title || !s.title.trim() || s.title === 'New chat';
}

/** A title from a first message: its first line, cut at a word near 48 characters. */
export function titleFrom(text) {
  const line = text.trim().split('\n')[0].replace(/\s+/g, ' ').trim();
  if ([...line].length <= 48) return line || 'Untitled chat';
  const cut = [...line].slice(0, 48).join('');
  const space = cut.lastIndexOf(' ');
  return `${(space > 24 ? cut.slice(0, space) : cut).trim()}…`;
}
