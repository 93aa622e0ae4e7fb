// Calls a running `modlm serve` with the official `openai` package: completions and chat
// completions, streaming and not, the model list and an error. Prints one JSON object that
// tests/test_serve.cpp checks. Usage: node client_test.mjs BASE_URL API_KEY
import OpenAI from "openai";

const [, , baseURL, apiKey] = process.argv;
const client = new OpenAI({ baseURL, apiKey: apiKey || "unused", maxRetries: 0, timeout: 60000 });
const out = {};

const c = await client.completions.create({ model: "m", prompt: "Hello", max_tokens: 8, temperature: 0 });
out.completion = { text: c.choices[0].text, finish: c.choices[0].finish_reason, usage: c.usage, object: c.object };

let text = "", finish = null, chunks = 0;
const cs = await client.completions.create({ model: "m", prompt: "Hello", max_tokens: 8, temperature: 0, stream: true });
for await (const ch of cs) {
  chunks++;
  text += ch.choices[0]?.text ?? "";
  finish = ch.choices[0]?.finish_reason ?? finish;
}
out.completion_stream = { text, finish, chunks };

const m = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi there" }];
const cc = await client.chat.completions.create({ model: "m", messages: m, max_tokens: 6, temperature: 0 });
out.chat = { text: cc.choices[0].message.content, role: cc.choices[0].message.role, finish: cc.choices[0].finish_reason, usage: cc.usage };

text = ""; finish = null;
let role = null, usage = null;
const ccs = await client.chat.completions.create({ model: "m", messages: m, max_tokens: 6, temperature: 0, stream: true,
                                                   stream_options: { include_usage: true } });
for await (const ch of ccs) {
  if (ch.usage) usage = ch.usage;
  const d = ch.choices[0]?.delta;
  if (d?.role) role = d.role;
  text += d?.content ?? "";
  finish = ch.choices[0]?.finish_reason ?? finish;
}
out.chat_stream = { text, role, finish, usage };

out.models = (await client.models.list()).data.map((x) => x.id);

try {
  await client.completions.create({ model: "m", prompt: "x", max_tokens: -1 });
  out.error = null;
} catch (e) {
  out.error = { status: e.status, name: e.constructor.name, message: e.message, bad_request: e instanceof OpenAI.BadRequestError };
}
console.log(JSON.stringify(out));
