// One Gemini Live session with @google/genai's live client: one clientContent
// turn; prints every message the SDK delivered up to turnComplete, and how the
// socket closed. Inputs: GEMINI_BASE_URL (https://…: the SDK dials wss://),
// API_KEY, MODALITY (TEXT or AUDIO); NODE_EXTRA_CA_CERTS trusts a test certificate.
import { GoogleGenAI } from "@google/genai";

const ai = new GoogleGenAI({ apiKey: process.env.API_KEY, httpOptions: { baseUrl: process.env.GEMINI_BASE_URL } });
const modality = process.env.MODALITY;
const messages = [];
let turnDone, turnFailed, sawClose;
const turn = new Promise((resolve, reject) => ((turnDone = resolve), (turnFailed = reject)));
const closed = new Promise((resolve) => (sawClose = resolve));
const session = await ai.live.connect({
  model: "gemini-live-2.5-flash",
  config: { responseModalities: [modality], ...(modality === "AUDIO" ? { outputAudioTranscription: {} } : {}) },
  callbacks: {
    onmessage: (message) => {
      messages.push(message);
      if (message.serverContent?.turnComplete) turnDone();
    },
    onerror: (event) => turnFailed(new Error(`error: ${event.message}`)),
    onclose: (event) => {
      sawClose({ code: event.code, reason: event.reason });
      turnFailed(new Error(`socket closed early: ${event.code} ${event.reason}`));
    },
  },
});
session.sendClientContent({ turns: [{ role: "user", parts: [{ text: "hello" }] }], turnComplete: true });
await turn;
session.close();
console.log(JSON.stringify({ messages, close: await closed }));
