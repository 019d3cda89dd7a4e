// Drives a tool round trip through a Chat (AbstractChat, what useChat runs) of one `ai`
// major against a live Roost, and prints what it saw as JSON.
//
//   node tools.mjs '<json>'
//
// The JSON names `base` (Roost's URL), `pkg` ("ai" = newest 5.x, "ai-6", "ai-7"),
// `chatId`, `text`, and `approve` (null: the tool needs no approval; true/false: answer
// the approval request so). The tool (get_weather) runs on the client: onToolCall adds
// its output, and sendAutomaticallyWhen sends the next request, as an app would.
const req = JSON.parse(process.argv[2]);
const ai = await import(req.pkg === "ai-7" ? "ai-7" : req.pkg);
const { AbstractChat, DefaultChatTransport, lastAssistantMessageIsCompleteWithToolCalls } = ai;
const withApprovals = ai.lastAssistantMessageIsCompleteWithApprovalResponses;

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
    this.messages = [...this.messages.slice(0, index), structuredClone(message), ...this.messages.slice(index + 1)];
  };
  snapshot = (value) => structuredClone(value);
}

class PlainChat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new PlainChatState() });
  }
}

const requests = [];
const chunks = [];
async function recordingFetch(url, init) {
  requests.push({ url: String(url), method: init?.method ?? "GET", body: init?.body ? JSON.parse(init.body) : null });
  const res = await fetch(url, init);
  if (res.body) {
    const copy = res.clone();
    chunks.push(copy.text().then((t) => t.split("\n\n").filter((b) => b.startsWith("data: ")).map((b) => b.slice(6))));
  }
  return res;
}

const result = { errors: [], toolCalls: [] };
let approvalAnswered = req.approve === null;
let chat;
chat = new PlainChat({
  id: req.chatId,
  transport: new DefaultChatTransport({
    api: `${req.base}/api/ai/chat`,
    fetch: recordingFetch,
    headers: req.pkg === "ai" ? {} : { "X-AI-SDK-Version": req.pkg.slice(3) },
  }),
  onError: (e) => result.errors.push(String(e)),
  onToolCall: ({ toolCall }) => {
    if (!approvalAnswered) return; // it runs once approved
    result.toolCalls.push(toolCall.toolCallId);
    const add = chat.addToolOutput ?? chat.addToolResult;
    add.call(chat, { tool: toolCall.toolName, toolCallId: toolCall.toolCallId, output: { temp: 21 } });
  },
  sendAutomaticallyWhen: ({ messages }) =>
    lastAssistantMessageIsCompleteWithToolCalls({ messages }) ||
    (withApprovals !== undefined && withApprovals({ messages })),
});

async function settle() {
  // until the chat is idle and the last assistant message has the final text
  for (let i = 0; i < 500; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const last = chat.messages.at(-1);
    const text = (last?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
    if (chat.status === "ready" && text.includes("It is sunny.")) return;
    if (chat.status === "error") return;
  }
}

try {
  await chat.sendMessage({ text: req.text });
  if (req.approve !== null) {
    for (let i = 0; i < 250 && chat.status !== "ready"; i++) await new Promise((r) => setTimeout(r, 20));
    const part = chat.messages.at(-1).parts.find((p) => p.state === "approval-requested");
    result.approvalRequested = part !== undefined;
    if (part !== undefined) {
      approvalAnswered = true;
      await chat.addToolApprovalResponse({ id: part.approval.id, approved: req.approve, reason: req.approve ? undefined : "no" });
    }
  }
  await settle();
} catch (err) {
  result.errors.push(String(err));
}
result.status = chat.status;
result.chatError = chat.error === undefined ? null : String(chat.error);
result.messages = chat.messages;
result.requests = requests;
result.chunks = (await Promise.all(chunks)).map((list) => list.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d)));
process.stdout.write(JSON.stringify(result));
