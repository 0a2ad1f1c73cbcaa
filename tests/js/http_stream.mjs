// Streams one chat completion with the openai SDK and one generateContentStream
// with @google/genai, both through Sluice, and prints the text deltas each yielded.
import OpenAI from "openai";
import { GoogleGenAI } from "@google/genai";

const url = process.env.SLUICE_URL;
const apiKey = process.env.SLUICE_KEY;

const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 });
const chat = await openai.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hi" }],
  stream: true,
  stream_options: { include_usage: true },
});
const openaiDeltas = [];
let openaiUsage = null;
for await (const chunk of chat) {
  for (const choice of chunk.choices) if (choice.delta?.content) openaiDeltas.push(choice.delta.content);
  if (chunk.usage) openaiUsage = chunk.usage;
}

const genai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl: url } });
const stream = await genai.models.generateContentStream({ model: "gemini-2.0-flash", contents: "hi" });
const geminiDeltas = [];
for await (const chunk of stream) if (chunk.text) geminiDeltas.push(chunk.text);

console.log(JSON.stringify({ openaiDeltas, openaiUsage, geminiDeltas }));
