// HTTP helpers: JSON requests, SSE over fetch, and a 401 hook for the login form.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const listeners = { unauthorized: () => {} };

/** Called with no arguments whenever a request answers 401. */
export function onUnauthorized(fn) {
  listeners.unauthorized = fn;
}

async function errorOf(resp) {
  let code = 'http_error';
  let message = `${resp.status} ${resp.statusText}`;
  let details = null;
  try {
    const body = await resp.json();
    if (body && body.error) ({ code, message, details } = body.error);
  } catch {
    /* not JSON */
  }
  if (resp.status === 401) listeners.unauthorized();
  return new ApiError(resp.status, code, message, details);
}

/** fetch + JSON; throws ApiError for any non-2xx. Returns null for 204. */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: { Accept: 'application/json' }, signal, credentials: 'same-origin' };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await errorOf(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

/**
 * POST ``body`` and read the answer as server-sent events.
 * ``onEvent(name, data, id)`` is called for each event (data parsed as JSON).
 * Resolves when the stream ends; throws ApiError for a non-2xx answer.
 */
export async function postStream(path, body, onEvent, { signal } = {}) {
  const headers = { Accept: 'text/event-stream' };
  const init = { method: 'POST', headers, signal, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value.replace(/\r\n?/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      dispatch(block, onEvent);
    }
  }
}

function dispatch(block, onEvent) {
  let name = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (!data.length) return;
  let parsed;
  try {
    parsed = JSON.parse(data.join('\n'));
  } catch {
    return;
  }
  onEvent(name, parsed, id);
}

/** A random id for client_id (crypto.randomUUID needs a secure context; this does not). */
export function newClientId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return 'web-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export const sessionPath = (sid) => `/api/sessions/${encodeURIComponent(sid)}`;
