// Drives a live Roost's /api/ai/chat with the real AI SDK and prints what it saw as JSON.
//
//   node drive.mjs '<json>'
//
// The JSON names `base` (Roost's URL), `op`, optional `headers` (sent with every request)
// and the request:
//   op "send":   {chatId, messages, trigger, messageId?}  one request through DefaultChatTransport
//   op "resume": {chatId, messages}  sends, drops the connection after the first text-delta,
//                then resumes with the transport's reconnectToStream (GET .../{id}/stream)
//   op "chat":   {chatId, text}  one user message through a Chat (AbstractChat, what useChat
//                runs, with a plain state instead of React's); reports its messages, status, error
//
// Every HTTP answer is recorded raw and checked three ways: each chunk against the newest
// v5 `uiMessageChunkSchema` (parseJsonEventStream), the whole body through ai@5.0.0's own
// DefaultChatTransport + readUIMessageStream (5.0.0's schema is strict: no extra keys),
// and the SSE framing (`data: <json>` events, `data: [DONE]` last).
import {
  AbstractChat,
  DefaultChatTransport,
  parseJsonEventStream,
  readUIMessageStream,
  uiMessageChunkSchema,
} from "ai";
import {
  DefaultChatTransport as LegacyTransport,
  readUIMessageStream as legacyReadUIMessageStream,
} from "ai-5.0.0";

const req = JSON.parse(process.argv[2]);
const recorded = [];

async function recordingFetch(url, init) {
  const res = await fetch(url, init);
  recorded.push({
    url: String(url),
    method: init?.method ?? "GET",
    status: res.status,
    headers: Object.fromEntries(res.headers),
    clone: res.body ? res.clone() : null,
  });
  return res;
}

function streamOf(text) {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(text));
      controller.close();
    },
  });
}

function arrayStream(items) {
  return new ReadableStream({
    start(controller) {
      for (const item of items) controller.enqueue(item);
      controller.close();
    },
  });
}

async function lastMessage(iterable) {
  let last = null;
  for await (const message of iterable) last = message;
  return last;
}

async function collect(stream) {
  const out = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return out;
    out.push(value);
  }
}

async function check(record) {
  const { clone, ...out } = record;
  if (clone === null || record.status !== 200) {
    out.body = clone ? await clone.text() : null;
    return out;
  }
  let text;
  try {
    text = await clone.text();
  } catch (err) {
    out.aborted = String(err);
    return out;
  }
  out.events = text
    .split("\n\n")
    .filter((block) => block.trim() !== "" && !block.startsWith(":"));
  const parsed = await collect(parseJsonEventStream({ stream: streamOf(text), schema: uiMessageChunkSchema }));
  out.chunks = parsed.filter((p) => p.success).map((p) => p.value);
  out.invalid = parsed.filter((p) => !p.success).map((p) => String(p.error));
  try {
    // 5.0.0's transport refuses (throws on) any chunk its strict schema does not allow
    const legacyChunks = await collect(new LegacyTransport().processResponseStream(streamOf(text)));
    const errors = [];
    out.legacyMessage = await lastMessage(
      legacyReadUIMessageStream({ stream: arrayStream(legacyChunks), onError: (e) => errors.push(String(e)) }),
    );
    out.legacyError = null;
    out.legacyStreamErrors = errors;
  } catch (err) {
    out.legacyError = String(err);
  }
  return out;
}

// What useChat keeps in React state, kept in plain fields (the ChatState interface).
class PlainChatState {
  constructor() {
    this.messages = [];
    this.status = "ready";
    this.error = undefined;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  };
  snapshot = (value) => structuredClone(value);
}

class PlainChat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new PlainChatState() });
  }
}

function textOf(message) {
  return (message?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
}

const transport = new DefaultChatTransport({
  api: `${req.base}/api/ai/chat`,
  fetch: recordingFetch,
  headers: req.headers, // e.g. {Authorization: "Bearer <token>"}
});
const result = { errors: [] };
const onError = (e) => result.errors.push(String(e));

if (req.op === "send") {
  try {
    const stream = await transport.sendMessages({
      chatId: req.chatId,
      messages: req.messages,
      trigger: req.trigger ?? "submit-message",
      messageId: req.messageId,
      abortSignal: undefined,
    });
    result.message = await lastMessage(readUIMessageStream({ stream, onError }));
  } catch (err) {
    result.errors.push(String(err));
  }
} else if (req.op === "resume") {
  const abort = new AbortController();
  const stream = await transport.sendMessages({
    chatId: req.chatId,
    messages: req.messages,
    trigger: "submit-message",
    abortSignal: abort.signal,
  });
  const reader = stream.getReader();
  result.before = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    result.before.push(value);
    if (value.type === "text-delta") break;
  }
  abort.abort();
  await reader.cancel().catch(() => {});
  const resumed = await transport.reconnectToStream({ chatId: req.chatId });
  result.reconnectNull = resumed === null;
  if (resumed !== null) {
    result.message = await lastMessage(readUIMessageStream({ stream: resumed, onError }));
  }
} else if (req.op === "chat") {
  const chat = new PlainChat({ id: req.chatId, transport, onError });
  try {
    await chat.sendMessage({ text: req.text });
  } catch (err) {
    result.errors.push(String(err));
  }
  result.status = chat.status;
  result.chatError = chat.error === undefined ? null : String(chat.error);
  result.messages = chat.messages;
  result.message = chat.messages.at(-1);
} else {
  throw new Error(`unknown op ${req.op}`);
}

result.text = textOf(result.message);
result.http = [];
for (const record of recorded) result.http.push(await check(record));
for (const record of result.http) {
  if (record.legacyMessage !== undefined) record.legacyText = textOf(record.legacyMessage);
}
process.stdout.write(JSON.stringify(result));
