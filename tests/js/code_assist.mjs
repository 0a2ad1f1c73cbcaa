// @google/genai through Sluice when Sluice holds only a Code Assist credential:
// a stream, a plain generateContent and a countTokens, as the SDK yields them.
import { GoogleGenAI } from "@google/genai";

const genai = new GoogleGenAI({ apiKey: process.env.SLUICE_KEY, httpOptions: { baseUrl: process.env.SLUICE_URL } });
const stream = await genai.models.generateContentStream({ model: "gemini-x", contents: "hi" });
const deltas = [];
let streamUsage = null;
for await (const chunk of stream) {
  deltas.push(chunk.text);
  if (chunk.usageMetadata) streamUsage = chunk.usageMetadata;
}
const reply = await genai.models.generateContent({ model: "gemini-x", contents: "hi" });
const counted = await genai.models.countTokens({ model: "gemini-x", contents: "hi" });
console.log(JSON.stringify({ deltas, streamUsage, text: reply.text, totalTokens: counted.totalTokens }));
