// One OpenAI Realtime session with the openai SDK's Node WebSocket client
// (openai/realtime/ws): session.update, a user item, response.create; prints
// every event the SDK emitted up to response.done, and how the socket closed.
// Inputs: OPENAI_BASE_URL (https://…/v1: the SDK dials wss:// only), API_KEY,
// MODALITY (text or audio); NODE_EXTRA_CA_CERTS trusts a test certificate.
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const rt = new OpenAIRealtimeWS({ model: "gpt-realtime" }, client);
const events = [];
const closed = new Promise((resolve) => rt.socket.on("close", (code, reason) => resolve({ code, reason: `${reason}` })));
const done = new Promise((resolve, reject) => {
  rt.on("event", (event) => {
    events.push(event);
    if (event.type === "response.done") resolve();
  });
  rt.on("error", (err) => reject(err));
  closed.then((how) => reject(new Error(`socket closed early: ${JSON.stringify(how)}`)));
});
rt.socket.on("open", () => {
  rt.send({ type: "session.update", session: { type: "realtime", output_modalities: [process.env.MODALITY] } });
  rt.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text: "hello" }] },
  });
  rt.send({ type: "response.create" });
});
await done;
rt.close();
console.log(JSON.stringify({ events, close: await closed }));
