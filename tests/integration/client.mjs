// client.mjs - integration checks against a running `mcai serve`, with the official
// openai client (5.x) and raw fetch. run.sh starts the server and passes:
//   MCAI_BASE (http://127.0.0.1:PORT), MCAI_ADMIN_KEY, MCAI_CTX (the server's --ctx),
//   MCAI_QUICK=1 to shorten generations (the ASan build);
//   MCAI_LORA_GGUF, MCAI_LORA_PEFT (the adapter file and its PEFT twin's directory) and
//   MCAI_LORA_TEXT, MCAI_LORA_TEXT_HALF (what `mcai generate --lora` prints for
//   "Once upon a time", 24 greedy tokens, at scale 1 and 0.5) for the adapter checks.
// Each check prints "ok - name" or "FAIL - name: why"; the exit code is the number of
// failures. The last line is a summary run.sh and test_integration.c read.
import OpenAI from "openai";
import { readFileSync } from "node:fs";
import { httpClient } from "./http.mjs";

const BASE = process.env.MCAI_BASE;
const ADMIN = process.env.MCAI_ADMIN_KEY;
const CTX = Number(process.env.MCAI_CTX || 512);
const QUICK = process.env.MCAI_QUICK === "1";
const LONG = QUICK ? 120 : 400; // tokens of the long streams

let passed = 0;
let failed = 0;
function ok(name) {
  passed++;
  console.log(`ok - ${name}`);
}
function fail(name, why) {
  failed++;
  console.log(`FAIL - ${name}: ${why}`);
}
function check(name, cond, why) {
  if (cond) ok(name);
  else fail(name, why === undefined ? "condition false" : why);
  return cond;
}
function eq(name, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  return check(name, g === w, `got ${g?.slice(0, 300)}, want ${w?.slice(0, 300)}`);
}

// ---- Raw HTTP helpers --------------------------------------------------------------

const http = httpClient(BASE);

const admin = (method, path, body) => http(method, "/admin" + path, { key: ADMIN, body });

// Reads an SSE response into its data payloads ("[DONE]" kept as a string).
async function sse(path, key, body, { onFirst, signal } = {}) {
  const res = await fetch(BASE + path, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  const events = [];
  if (!res.headers.get("content-type")?.startsWith("text/event-stream")) {
    return { status: res.status, events, json: await res.json().catch(() => null), raw: "" };
  }
  const dec = new TextDecoder();
  let buf = "";
  let raw = "";
  let first = true;
  for await (const chunk of res.body) {
    const s = dec.decode(chunk, { stream: true });
    buf += s;
    raw += s;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith("data: ")) throw new Error(`bad SSE event: ${ev.slice(0, 80)}`);
      const d = ev.slice(6);
      events.push(d === "[DONE]" ? d : JSON.parse(d));
      if (first && onFirst) {
        first = false;
        await onFirst();
      }
    }
  }
  return { status: res.status, events, raw, rest: buf };
}

function errorOf(r) {
  return r.json && r.json.error ? r.json.error : {};
}

// ---- Checks ------------------------------------------------------------------------

async function adminChecks() {
  let r = await http("POST", "/admin/tenants", { body: { name: "x" } });
  check("admin without key is 401", r.status === 401 && errorOf(r).code === "invalid_admin_key",
    r.text);
  r = await http("GET", "/admin/tenants", { key: "wrong-admin-key-0123456789abcdef" });
  check("admin with a wrong key is 401", r.status === 401, r.text);

  const fronts = {
    alpha: { system_prompt: "You are Alpha.", max_tokens: 64, sampling: { temperature: 0 } },
    beta: { system_prompt: "You are Beta, a storyteller.", template: "Tell me: {{input}}",
            max_tokens: 32 },
  };
  const t = {};
  for (const name of ["alpha", "beta"]) {
    r = await admin("POST", "/tenants", { name, front: fronts[name] });
    check(`create tenant ${name}`, r.status === 201 && /^t_[0-9a-f]{16}$/.test(r.json?.id), r.text);
    t[name] = r.json;
  }
  eq("tenant front is stored", t.beta.front, fronts.beta);
  r = await admin("POST", "/tenants", { name: "gamma", limits: { rpm: 1 } });
  check("create tenant with limits", r.status === 201 && r.json.limits.rpm === 1, r.text);
  t.gamma = r.json;

  r = await admin("POST", "/tenants", { name: "alpha" });
  check("duplicate tenant name is 409", r.status === 409, r.text);
  r = await admin("POST", "/tenants", { name: "delta", limts: { rpm: 1 } });
  check("unknown admin field is 400 naming it", r.status === 400 &&
    errorOf(r).message.includes("'limts'"), r.text);
  check("unknown admin field is unknown_field with its name as param",
    errorOf(r).code === "unknown_field" && errorOf(r).param === "limts", r.text);
  r = await admin("POST", "/tenants", { name: "delta", limits: { rpn: 5 } });
  check("unknown limit is 400 unknown_field with param limits.rpn", r.status === 400 &&
    errorOf(r).code === "unknown_field" && errorOf(r).param === "limits.rpn", r.text);
  r = await admin("POST", "/tenants", { name: "delta", limits: { rpm: -1 } });
  check("negative limit is 400", r.status === 400 && errorOf(r).param === "limits", r.text);
  r = await admin("POST", "/tenants", { name: "delta", front: { sampling: { temperature: 99 } } });
  check("bad front is 400", r.status === 400 && errorOf(r).param === "front", r.text);

  r = await admin("GET", "/tenants");
  eq("list tenants", r.json.data.map((x) => x.name).filter((n) => n !== "omega"),
    ["alpha", "beta", "gamma"]);
  r = await admin("PATCH", `/tenants/${t.alpha.id}`,
    { front: { ...fronts.alpha, system_prompt: "You are Alpha v2." }, weight: 3 });
  check("patch front makes version 2", r.status === 200 && r.json.front_version === 2 &&
    r.json.weight === 3 && r.json.front.system_prompt === "You are Alpha v2.", r.text);
  r = await admin("GET", `/tenants/${t.alpha.id}/fronts/1`);
  check("the previous front version is kept", r.status === 200 && r.json.version === 1 &&
    r.json.front.system_prompt === "You are Alpha.", r.text);
  r = await admin("GET", `/tenants/${t.alpha.id}/fronts/3`);
  check("a front version that does not exist is 404", r.status === 404, r.text);
  r = await admin("GET", `/tenants/${t.beta.id}`);
  check("get tenant", r.status === 200 && r.json.name === "beta", r.text);
  r = await admin("GET", "/tenants/t_0000000000000000");
  check("unknown tenant is 404", r.status === 404, r.text);

  const keys = {};
  for (const name of ["alpha", "beta", "gamma"]) {
    r = await admin("POST", `/tenants/${t[name].id}/keys`);
    check(`create key for ${name}`, r.status === 201 && /^mcai_/.test(r.json.key), r.text);
    keys[name] = r.json.key;
  }
  r = await admin("POST", "/tenants", { name: "epsilon" });
  t.epsilon = r.json;
  r = await admin("POST", `/tenants/${t.epsilon.id}/keys`);
  keys.epsilon = r.json.key;
  r = await admin("POST", `/tenants/${t.alpha.id}/keys`);
  keys.alpha2 = r.json.key;
  keys.alpha2prefix = r.json.prefix;
  r = await admin("GET", `/tenants/${t.alpha.id}/keys`);
  check("key list shows prefixes only", r.status === 200 && r.json.data.length === 2 &&
    !r.text.includes(keys.alpha) && r.json.data.every((k) => k.prefix && !("key" in k)), r.text);
  return { t, keys };
}

async function chatChecks(client, model) {
  const msgs = [{ role: "user", content: "Once upon a time" }];
  const base = { model, messages: msgs, temperature: 0, max_tokens: 24 };

  const whole = await client.chat.completions.create(base);
  const c0 = whole.choices[0];
  check("chat: finish_reason length at the token limit", c0.finish_reason === "length",
    c0.finish_reason);
  check("chat: usage adds up", whole.usage.completion_tokens === 24 &&
    whole.usage.total_tokens === whole.usage.prompt_tokens + 24, JSON.stringify(whole.usage));
  check("chat: object and role", whole.object === "chat.completion" &&
    c0.message.role === "assistant" && c0.index === 0, JSON.stringify(whole));

  // Streaming gives the same bytes, one usage chunk with no choices, then [DONE].
  const stream = await client.chat.completions.create({ ...base, stream: true,
    stream_options: { include_usage: true } });
  let text = "";
  const pieces = [];
  let usageChunks = 0;
  let usage = null;
  let finish = null;
  let lastHadChoices = true;
  for await (const ch of stream) {
    if (ch.choices.length === 0) {
      usageChunks++;
      usage = ch.usage;
      lastHadChoices = false;
      continue;
    }
    lastHadChoices = true;
    const d = ch.choices[0].delta?.content || "";
    if (d) pieces.push(d);
    text += d;
    if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
  }
  eq("stream: text equals the non-streamed text byte for byte", text, c0.message.content);
  check("stream: exactly one usage chunk, last", usageChunks === 1 && !lastHadChoices,
    `${usageChunks} usage chunks`);
  eq("stream: usage equals the non-streamed usage", usage, whole.usage);
  eq("stream: finish_reason length", finish, "length");

  // Without include_usage no chunk has empty choices.
  const s2 = await sse("/v1/chat/completions", client.apiKey, { ...base, stream: true });
  check("stream: data lines end with [DONE]", s2.events.at(-1) === "[DONE]" &&
    s2.raw.endsWith("data: [DONE]\n\n"), s2.raw.slice(-80));
  check("stream: no usage chunk unless asked", s2.events.slice(0, -1)
    .every((e) => e.choices.length === 1 && !e.usage), "");

  // A stop string made of the end of one piece and the start of the next spans two
  // tokens; the answer must end right before it and never contain it.
  let k = pieces.findIndex((p, i) => i > 0 && i < pieces.length - 1 && p.length >= 1 &&
    pieces[i + 1].length >= 1);
  const stop = pieces[k].slice(-1) + pieces[k + 1].slice(0, 1);
  const cut = text.indexOf(stop);
  for (const streamed of [false, true]) {
    const req = { ...base, stop: [stop, "zzzz-never"] };
    let got;
    let fin;
    if (streamed) {
      const st = await client.chat.completions.create({ ...req, stream: true });
      got = "";
      for await (const ch of st) {
        got += ch.choices[0]?.delta?.content || "";
        fin = ch.choices[0]?.finish_reason || fin;
      }
    } else {
      const w = await client.chat.completions.create(req);
      got = w.choices[0].message.content;
      fin = w.choices[0].finish_reason;
    }
    const mode = streamed ? "streamed" : "whole";
    eq(`stop across tokens (${mode}): text ends before the stop`, got, text.slice(0, cut));
    check(`stop across tokens (${mode}): finish_reason stop, not leaked`,
      fin === "stop" && !got.includes(stop), `${fin} ${JSON.stringify(got)}`);
  }
  const single = await client.chat.completions.create({ ...base, stop: stop });
  eq("stop as a string", single.choices[0].message.content, text.slice(0, cut));

  const mct = await client.chat.completions.create({ ...base, max_tokens: 10,
    max_completion_tokens: 3 });
  eq("max_completion_tokens wins over max_tokens", mct.usage.completion_tokens, 3);

  // n choices with a seed: indexes, finish reasons, and reproducible.
  const nreq = { model, messages: msgs, n: 3, temperature: 1.0, seed: 1234, max_tokens: 12 };
  const n1 = await client.chat.completions.create(nreq);
  const n2 = await client.chat.completions.create(nreq);
  eq("n=3: indexes", n1.choices.map((c) => c.index), [0, 1, 2]);
  check("n=3: each choice has a finish_reason", n1.choices.every((c) =>
    ["stop", "length"].includes(c.finish_reason)), JSON.stringify(n1.choices));
  eq("seed: same seed, same choices", n2.choices.map((c) => c.message.content),
    n1.choices.map((c) => c.message.content));
  check("n=3: usage counts every choice", n1.usage.completion_tokens ===
    n1.choices.length * 12 || n1.usage.completion_tokens <= 36, JSON.stringify(n1.usage));

  // logprobs: at temperature 0 the sampled token is the most likely one.
  const lp = await client.chat.completions.create({ ...base, max_tokens: 6, logprobs: true,
    top_logprobs: 3 });
  const content = lp.choices[0].logprobs?.content || [];
  check("logprobs: one entry per token", content.length >= 1 && content.length <= 6,
    JSON.stringify(lp.choices[0].logprobs).slice(0, 200));
  check("logprobs: entries are well formed", content.every((e) => typeof e.token === "string" &&
    e.logprob <= 0 && Array.isArray(e.bytes) && e.top_logprobs.length === 3), "");
  check("logprobs: greedy token is the top alternative", content.every((e) =>
    e.top_logprobs[0].token === e.token && Math.abs(e.top_logprobs[0].logprob - e.logprob) <
    1e-5), JSON.stringify(content[0]));
  eq("logprobs: token texts join to the content", content.map((e) => e.token).join(""),
    lp.choices[0].message.content);

  // Content as text parts equals content as a string.
  const parts = await client.chat.completions.create({ ...base, messages: [{ role: "user",
    content: [{ type: "text", text: "Once upon " }, { type: "text", text: "a time" }] }] });
  eq("content as text parts equals the string", parts.choices[0].message.content,
    c0.message.content);
  try {
    await client.chat.completions.create({ ...base, messages: [{ role: "user", content: [
      { type: "image_url", image_url: { url: "http://x/y.png" } }] }] });
    fail("image part is 400", "accepted");
  } catch (e) {
    check("image part is 400 naming the part", e.status === 400 &&
      e.param === "messages[0].content[0].type" && /image_url/.test(e.message), e.message);
  }

  // A system message after the first position is merged into the leading system prompt.
  const late = await client.chat.completions.create({ ...base, messages: [
    { role: "user", content: "Once upon a time" }, { role: "system", content: "Be kind." },
    { role: "user", content: "Go on." }] });
  const early = await client.chat.completions.create({ ...base, messages: [
    { role: "system", content: "Be kind." }, { role: "user", content: "Once upon a time" },
    { role: "user", content: "Go on." }] });
  eq("late system message is merged first (documented rule)", late.choices[0].message.content,
    early.choices[0].message.content);

  // A prompt longer than the context: 400 before anything starts, streamed or not.
  const long = "hello there ".repeat(CTX);
  for (const stream of [false, true]) {
    const r = await http("POST", "/v1/chat/completions", { key: client.apiKey,
      body: { model, messages: [{ role: "user", content: long }], stream } });
    check(`context_length_exceeded (stream=${stream})`, r.status === 400 &&
      errorOf(r).code === "context_length_exceeded" &&
      r.headers.get("content-type").startsWith("application/json"), r.text.slice(0, 200));
  }
  return c0.message.content;
}

async function completionChecks(client, model) {
  const req = { model, prompt: "Once upon a time", temperature: 0, max_tokens: 16 };
  const w = await client.completions.create(req);
  check("completions: text and length", w.object === "text_completion" &&
    w.choices[0].finish_reason === "length" && w.usage.completion_tokens === 16, JSON.stringify(w));
  const st = await client.completions.create({ ...req, stream: true });
  let text = "";
  for await (const ch of st) text += ch.choices[0]?.text || "";
  eq("completions: streamed equals whole", text, w.choices[0].text);
  const lp = await client.completions.create({ ...req, max_tokens: 4, logprobs: 2 });
  const l = lp.choices[0].logprobs;
  check("completions: legacy logprobs", l && l.tokens.length === l.token_logprobs.length &&
    l.top_logprobs.every((o) => Object.keys(o).length >= 1) && l.text_offset[0] === 0,
    JSON.stringify(l));
}

async function embeddingChecks(client, model) {
  const e = await client.embeddings.create({ model, input: ["a cat", "a dog", "a cat"] });
  const v = e.data.map((d) => d.embedding);
  const norm = (x) => Math.sqrt(x.reduce((s, y) => s + y * y, 0));
  check("embeddings: three vectors", v.length === 3 && v[0].length > 0 &&
    v.every((x) => x.length === v[0].length), JSON.stringify(e).slice(0, 200));
  check("embeddings: L2-normalised", v.every((x) => Math.abs(norm(x) - 1) < 1e-4),
    v.map(norm).join(","));
  check("embeddings: same text, same vector", v[0].every((x, i) => Math.abs(x - v[2][i]) < 1e-6),
    "");
  check("embeddings: different texts differ", v[0].some((x, i) => Math.abs(x - v[1][i]) > 1e-4),
    "");
  const f = await http("POST", "/v1/embeddings", { key: client.apiKey,
    body: { model, input: "a cat", encoding_format: "float" } });
  check("embeddings: float format equals base64", f.status === 200 &&
    f.json.data[0].embedding.every((x, i) => Math.abs(x - v[0][i]) < 1e-6), f.text.slice(0, 200));
}

async function conversationChecks(keys, model) {
  const A = keys.alpha;
  let r = await http("POST", "/v1/conversations", { key: A, body: {
    messages: [{ role: "user", content: "Once upon a time" }], metadata: { topic: "test" } } });
  check("conversation: create", r.status === 200 && /^conv_[0-9a-f]{16}$/.test(r.json.id) &&
    r.json.n_messages === 1, r.text);
  const id = r.json.id;
  r = await http("POST", `/v1/conversations/${id}/messages`, { key: A,
    body: { messages: [{ role: "assistant", content: "there was a cat." }] } });
  check("conversation: append", r.status === 200 && r.json.messages.length === 2, r.text);
  r = await http("POST", "/v1/chat/completions", { key: A, body: { model, conversation: id,
    messages: [{ role: "user", content: "What next?" }], max_tokens: 8 } });
  check("conversation: usable from chat completions", r.status === 200, r.text);
  r = await http("GET", `/v1/conversations/${id}`, { key: A });
  check("conversation: chat appended user and assistant turns", r.status === 200 &&
    r.json.messages.length === 4 && r.json.messages[3].role === "assistant", r.text);
  r = await http("GET", "/v1/conversations", { key: A });
  check("conversation: list", r.status === 200 && r.json.data.some((c) => c.id === id), r.text);
  return id;
}

async function isolationChecks(t, keys, model, convA) {
  const B = keys.beta;
  const none = "conv_0123456789abcdef";
  const routes = [
    ["GET", (id) => `/v1/conversations/${id}`, undefined],
    ["GET", (id) => `/v1/conversations/${id}/messages`, undefined],
    ["POST", (id) => `/v1/conversations/${id}/messages`,
      { messages: [{ role: "user", content: "hi" }] }],
    ["DELETE", (id) => `/v1/conversations/${id}`, undefined],
  ];
  for (const [m, path, body] of routes) {
    const theirs = await http(m, path(convA), { key: B, body });
    const nobody = await http(m, path(none), { key: B, body });
    check(`isolation: ${m} ${path("{id}")} on another tenant's id is 404 like a missing id`,
      theirs.status === 404 && theirs.text === nobody.text, `${theirs.status} ${theirs.text}`);
  }
  const chat = await http("POST", "/v1/chat/completions", { key: B, body: { model,
    conversation: convA, messages: [{ role: "user", content: "hi" }] } });
  const chatNone = await http("POST", "/v1/chat/completions", { key: B, body: { model,
    conversation: none, messages: [{ role: "user", content: "hi" }] } });
  check("isolation: chat with another tenant's conversation is 404 like a missing one",
    chat.status === 404 && chat.text.replace(convA, "ID") === chatNone.text.replace(none, "ID"),
    chat.text);
  const still = await http("GET", `/v1/conversations/${convA}`, { key: keys.alpha });
  check("isolation: the owner still has it", still.status === 200, still.text);
  const spare = await http("POST", "/v1/conversations", { key: keys.alpha });
  const del = await http("DELETE", `/v1/conversations/${spare.json.id}`, { key: keys.alpha });
  const gone = await http("GET", `/v1/conversations/${spare.json.id}`, { key: keys.alpha });
  check("conversation: the owner deletes it, then it is 404", spare.status === 200 &&
    del.status === 200 && del.json.deleted === true && gone.status === 404, del.text);
  const listB = await http("GET", "/v1/conversations", { key: B });
  check("isolation: B's list does not show A's", listB.json.data.every((c) => c.id !== convA),
    listB.text);

  const uA = await http("GET", "/v1/usage", { key: keys.alpha });
  const uB = await http("GET", "/v1/usage", { key: B });
  check("usage: own figures only", uA.status === 200 && uA.json.tenant === t.alpha.id &&
    uB.json.tenant === t.beta.id && uA.json.total.requests > uB.json.total.requests &&
    !uA.text.includes(t.beta.id), `${uA.text} / ${uB.text}`);
  const ad = await admin("GET", `/tenants/${t.alpha.id}/usage`);
  eq("usage: operator sees the same totals", ad.json?.total?.requests,
    uA.json.total.requests + 0);

  // Revocation takes effect on the very next request.
  let r = await http("GET", "/v1/models", { key: keys.alpha2 });
  check("second key works", r.status === 200, r.text);
  r = await admin("DELETE", `/tenants/${t.alpha.id}/keys/${keys.alpha2prefix}`);
  check("revoke key", r.status === 200, r.text);
  r = await http("GET", "/v1/models", { key: keys.alpha2 });
  check("revoked key is 401 at once", r.status === 401 &&
    errorOf(r).code === "invalid_api_key", r.text);
  r = await http("GET", "/v1/models", { key: keys.alpha });
  check("the other key still works", r.status === 200, r.text);
  r = await admin("DELETE", `/tenants/${t.beta.id}/keys/${keys.alpha2prefix}`);
  check("revoking another tenant's key by its prefix is 404", r.status === 404, r.text);
  r = await http("GET", "/v1/models", { key: "mcai_notakey" });
  check("unknown key is 401", r.status === 401, r.text);
}

async function badInputWhileStreaming(keys, model) {
  const A = keys.alpha;
  const bad = [
    ["malformed JSON", '{"messages": [', "invalid_json", (e) => /byte \d+/.test(e.message)],
    ["wrong type", JSON.stringify({ model, messages: [{ role: "user", content: "x" }],
      max_tokens: "ten" }), "invalid_type", (e) => e.param === "max_tokens"],
    ["absurd number", JSON.stringify({ model, messages: [{ role: "user", content: "x" }],
      max_tokens: 1e12 }), "invalid_value", (e) => e.message.includes("1000000000000")],
    ["invalid UTF-8", Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"'),
      Buffer.from([0xc3, 0x28]), Buffer.from('"}]}')]), "invalid_utf8",
      (e) => e.message.includes("offset 39")],
    ["10 MB body", "x".repeat(10 << 20), "request_too_large", () => true],
  ];
  const results = [];
  const s = await sse("/v1/chat/completions", keys.epsilon, { model, max_tokens: LONG,
    temperature: 0.8, seed: 7, messages: [{ role: "user", content: "Tell a long story" }] }, {
    onFirst: async () => {
      for (const [name, raw] of bad) {
        results.push(await http("POST", "/v1/chat/completions", { key: A, raw,
          headers: { "content-type": "application/json" } }));
      }
    },
  });
  for (let i = 0; i < bad.length; i++) {
    const [name, , code, more] = bad[i];
    const r = results[i];
    const e = r ? errorOf(r) : {};
    check(`bad input: ${name} is 4xx with code ${code}`, r && r.status >= 400 && r.status < 500 &&
      e.code === code && more(e), r ? `${r.status} ${r.text.slice(0, 200)}` : "no reply");
  }
  if (results.length === 0) console.log("stream answer:", s.status, JSON.stringify(s.json));
  const chunks = s.events.filter((e) => e !== "[DONE]");
  const fin = chunks.at(-1)?.choices?.[0]?.finish_reason;
  check("bad input: the other tenant's stream was served to the end",
    s.events.at(-1) === "[DONE]" && ["length", "stop"].includes(fin) && chunks.length > 10,
    `${s.events.length} events, finish ${fin}`);
}

// Many streams of two tenants at once: every one ends with [DONE] and its own full text,
// and each equals the same request run alone (batching changes nothing).
async function concurrencyChecks(keys, model) {
  const N = QUICK ? 6 : 16;
  const req = (i) => ({ model, max_tokens: 20, temperature: 0.9, seed: 100 + (i % 4),
    messages: [{ role: "user", content: `Story number ${i % 4}` }] });
  const key = (i) => (i % 2 ? keys.alpha : keys.epsilon);
  const textOf = (s) => s.events.filter((e) => e !== "[DONE]")
    .map((e) => e.choices[0]?.delta?.content || "").join("");
  const all = await Promise.all(Array.from({ length: N },
    (_, i) => sse("/v1/chat/completions", key(i), req(i))));
  check(`concurrency: ${N} streams of two tenants all end with [DONE]`,
    all.every((s) => s.status === 200 && s.events.at(-1) === "[DONE]"),
    all.map((s) => s.status).join(","));
  const alone = [];
  for (let i = 0; i < 4; i++) alone.push(textOf(await sse("/v1/chat/completions", key(i), req(i))));
  const bad = all.map((s, i) => textOf(s) === alone[i % 4] ? -1 : i).filter((i) => i >= 0);
  check("concurrency: each stream equals the same request run alone", bad.length === 0,
    `streams ${bad.join(",")} differ`);
}

async function limitChecks(keys, model) {
  const C = keys.gamma;
  const body = { model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
  const r1 = await http("POST", "/v1/chat/completions", { key: C, body });
  const r2 = await http("POST", "/v1/chat/completions", { key: C, body });
  check("limits: first request passes", r1.status === 200, r1.text);
  check("limits: over rpm is 429 with Retry-After and an OpenAI body", r2.status === 429 &&
    Number(r2.headers.get("retry-after")) >= 1 && errorOf(r2).code === "rate_limit_exceeded" &&
    errorOf(r2).type === "rate_limit_error", `${r2.status} ${r2.text}`);
}

// ---- LoRA adapters ---------------------------------------------------------------

function ggufForm(name, file) {
  const f = new FormData();
  f.append("name", name);
  f.append("file", new Blob([file]), "adapter.gguf");
  return f;
}

function peftForm(name, dir) {
  const f = new FormData();
  f.append("name", name);
  f.append("adapter_config", new Blob([readFileSync(`${dir}/adapter_config.json`)]),
    "adapter_config.json");
  f.append("adapter_model", new Blob([readFileSync(`${dir}/adapter_model.safetensors`)]),
    "adapter_model.safetensors");
  return f;
}


const LORA_PROMPT = { prompt: "Once upon a time", temperature: 0, max_tokens: 24 };

async function complete(key, model, extra = {}) {
  return http("POST", "/v1/completions", { key, body: { model, ...LORA_PROMPT, ...extra } });
}

async function adapterChecks(t, keys, model) {
  const GGUF = process.env.MCAI_LORA_GGUF;
  const PEFT = process.env.MCAI_LORA_PEFT;
  const WANT = process.env.MCAI_LORA_TEXT;
  const WANT_HALF = process.env.MCAI_LORA_TEXT_HALF;
  if (!GGUF || !PEFT || WANT === undefined) {
    fail("adapter checks", "MCAI_LORA_GGUF / MCAI_LORA_PEFT / MCAI_LORA_TEXT not set");
    return;
  }
  const gguf = readFileSync(GGUF);
  const A = keys.alpha;
  const B = keys.beta;

  // Upload as tenant A: the GGUF file and its PEFT twin.
  let r = await http("POST", "/v1/adapters", { key: A, raw: ggufForm("story", gguf) });
  check("adapters: GGUF upload is 201 with its metadata", r.status === 201 &&
    r.json.id === "story" && r.json.version === 1 && r.json.format === "gguf" &&
    r.json.rank === 4 && r.json.alpha === 8 && JSON.stringify(r.json.targets) === '["q","v"]' &&
    r.json.size_bytes === gguf.length && r.json.base_model === model, r.text);
  r = await http("POST", "/v1/adapters", { key: A, raw: peftForm("story-peft", PEFT) });
  check("adapters: PEFT upload is 201", r.status === 201 && r.json.format === "peft" &&
    r.json.rank === 4, r.text);
  r = await http("GET", "/v1/adapters", { key: A });
  eq("adapters: list", r.json?.data?.map((x) => x.id), ["story", "story-peft"]);
  r = await http("GET", "/v1/adapters/story", { key: A });
  check("adapters: get one", r.status === 200 && r.json.id === "story", r.text);

  const clientA = new OpenAI({ apiKey: A, baseURL: BASE + "/v1", maxRetries: 0 });
  const ids = (await clientA.models.list()).data.map((m) => m.id);
  eq("adapters: A's /v1/models lists the base and its adapters", ids,
    [model, "story", "story-peft"]);

  // The adapter through the server gives what `mcai generate --lora` gives.
  for (const name of ["story", "story-peft"]) {
    const c = await clientA.completions.create({ model: name, ...LORA_PROMPT });
    eq(`adapters: ${name} greedy completion equals mcai generate --lora`, c.choices[0].text, WANT);
    check(`adapters: ${name} answers under its own name`, c.model === name, c.model);
  }
  r = await complete(A, "story", { lora_scale: 0.5 });
  eq("adapters: lora_scale 0.5 equals mcai generate --lora FILE:0.5",
    r.json?.choices?.[0]?.text, WANT_HALF);
  r = await complete(A, model);
  check("adapters: the base model answers differently", r.status === 200 &&
    r.json.choices[0].text !== WANT, r.text);
  const chat = await clientA.chat.completions.create({ model: "story", temperature: 0,
    max_tokens: 8, messages: [{ role: "user", content: "Hi" }] });
  check("adapters: chat with model=<adapter> works through the openai client",
    chat.model === "story" && chat.usage.completion_tokens > 0, JSON.stringify(chat));

  // Tenant B: A's adapter does not exist for it, byte for byte like an unknown name.
  const rb = await complete(B, "story");
  const rn = await complete(B, "no-such-adapter");
  check("adapters: B using A's adapter name is 404 model_not_found",
    rb.status === 404 && errorOf(rb).code === "model_not_found", rb.text);
  check("adapters: ... with the same body as a name that does not exist",
    rb.status === rn.status && rb.text === rn.text.replace("no-such-adapter", "story"),
    `${rb.text} vs ${rn.text}`);
  r = await http("GET", "/v1/models", { key: B });
  check("adapters: B's /v1/models does not list A's adapters",
    r.status === 200 && !r.text.includes("story"), r.text);
  r = await http("GET", "/v1/models/story", { key: B });
  check("adapters: B cannot retrieve A's adapter as a model", r.status === 404, r.text);
  r = await http("GET", "/v1/adapters/story", { key: B });
  check("adapters: B cannot get A's adapter", r.status === 404, r.text);
  r = await http("DELETE", "/v1/adapters/story", { key: B });
  check("adapters: B cannot delete A's adapter", r.status === 404, r.text);

  // A malformed upload is refused with the loader's message, and nothing is stored.
  r = await http("POST", "/v1/adapters",
    { key: A, raw: ggufForm("broken", gguf.subarray(0, 5000)) });
  check("adapters: truncated GGUF is 400 invalid_adapter naming the tensor", r.status === 400 &&
    errorOf(r).code === "invalid_adapter" && /tensor .*lora_[ab]/.test(errorOf(r).message),
    r.text);
  const junk = Buffer.from(gguf);
  junk.write("NOPE", 0);
  r = await http("POST", "/v1/adapters", { key: A, raw: ggufForm("broken", junk) });
  check("adapters: a file that is not GGUF is 400", r.status === 400 &&
    errorOf(r).code === "invalid_adapter", r.text);
  r = await http("POST", "/v1/adapters", { key: A, raw: ggufForm("Bad name!", gguf) });
  check("adapters: a bad name is 400", r.status === 400 && errorOf(r).param === "name", r.text);
  r = await http("POST", "/v1/adapters", { key: A, raw: ggufForm(model, gguf) });
  check("adapters: the base model's name is 409", r.status === 409, r.text);
  r = await http("POST", "/v1/adapters", { key: A, body: { name: "x" } });
  check("adapters: a JSON body is 415", r.status === 415, r.text);
  r = await http("GET", "/v1/adapters", { key: A });
  eq("adapters: the bad uploads stored nothing", r.json?.data?.map((x) => x.id),
    ["story", "story-peft"]);

  // Replacing bumps the version.
  r = await http("POST", "/v1/adapters", { key: A, raw: ggufForm("story", gguf) });
  check("adapters: replacing is 200 with version 2", r.status === 200 && r.json.version === 2,
    r.text);

  // Delete while a stream with the adapter runs: the stream finishes.
  let del = null;
  const s = await sse("/v1/completions", A, { model: "story-peft", prompt: "Once upon a time",
    max_tokens: LONG, temperature: 1, seed: 5 },
  { onFirst: async () => {
    del = await http("DELETE", "/v1/adapters/story-peft", { key: A });
  } });
  check("adapters: delete during a stream is 200", del?.status === 200 &&
    del.json.deleted === true, del?.text);
  const last = s.events.filter((e) => e !== "[DONE]").at(-1);
  check("adapters: the stream with the deleted adapter completes", s.events.at(-1) === "[DONE]" &&
    last?.choices?.[0]?.finish_reason && !s.events.some((e) => e.error), s.raw.slice(-300));
  r = await complete(A, "story-peft");
  check("adapters: the deleted adapter is gone afterwards", r.status === 404, r.text);
  r = await http("DELETE", "/v1/adapters/story-peft", { key: A });
  check("adapters: deleting it again is 404", r.status === 404, r.text);

  // The operator publishes one adapter to A and epsilon only.
  const pf = ggufForm("house", gguf);
  pf.append("tenants", `${t.alpha.id},${t.epsilon.id}`);
  r = await http("POST", "/admin/adapters", { key: ADMIN, raw: pf });
  check("adapters: publish to two tenants is 201", r.status === 201 &&
    r.json.data.length === 2 && r.json.data.every((x) => x.published && x.id === "house"),
    r.text);
  const bad = ggufForm("house", gguf);
  bad.append("tenants", `${t.alpha.id},t_0000000000000000`);
  r = await http("POST", "/admin/adapters", { key: ADMIN, raw: bad });
  check("adapters: publish to an unknown tenant is 404", r.status === 404, r.text);
  r = await complete(keys.epsilon, "house");
  eq("adapters: a chosen tenant uses the published adapter", r.json?.choices?.[0]?.text, WANT);
  r = await http("GET", "/v1/models", { key: keys.epsilon });
  check("adapters: ... and sees it in /v1/models", r.text.includes('"house"'), r.text);
  for (const other of ["beta", "gamma"]) {
    r = await http("GET", "/v1/models", { key: keys[other] });
    check(`adapters: ${other} (not chosen) does not see the published adapter`,
      r.status === 200 && !r.text.includes("house"), r.text);
  }
  r = await complete(B, "house");
  check("adapters: ... and gets model_not_found for it", r.status === 404, r.text);
  r = await admin("GET", `/tenants/${t.epsilon.id}/adapters`);
  check("adapters: admin lists a tenant's adapters", r.status === 200 &&
    r.json.data.length === 1 && r.json.data[0].published === true, r.text);

  // Pinning.
  r = await admin("POST", `/tenants/${t.epsilon.id}/adapters/house/pin`);
  check("adapters: pin", r.status === 200 && r.json.pinned === true, r.text);
  r = await http("GET", "/v1/adapters/house", { key: keys.epsilon });
  check("adapters: the tenant sees it pinned", r.json?.pinned === true, r.text);
  check("adapters: a pinned adapter is resident",
    (await metric("mcai_adapter_cache_resident")) >= 1, "resident 0");
  r = await admin("DELETE", `/tenants/${t.epsilon.id}/adapters/house/pin`);
  check("adapters: unpin", r.status === 200 && r.json.pinned === false, r.text);
  r = await admin("POST", `/tenants/${t.epsilon.id}/adapters/nothing/pin`);
  check("adapters: pinning an unknown adapter is 404", r.status === 404, r.text);

  // Metrics per tenant and adapter, and the cache's figures.
  const m = await http("GET", "/metrics");
  for (const w of [`mcai_adapter_requests_total{tenant="${t.alpha.id}",adapter="story"}`,
    `mcai_adapter_completion_tokens_total{tenant="${t.epsilon.id}",adapter="house"}`,
    "mcai_adapter_cache_hits_total ", "mcai_adapter_cache_misses_total ",
    "mcai_adapter_cache_evictions_total ", "mcai_adapter_cache_resident_bytes "])
    check(`metrics: ${w.split("{")[0].trim()}`, m.text.includes(w), w);

  // After A deletes "story", A's own answer for it is exactly what B got all along.
  r = await http("DELETE", "/v1/adapters/story", { key: A });
  check("adapters: delete", r.status === 200, r.text);
  r = await complete(A, "story");
  check("adapters: B's answer for A's adapter equals A's answer once it is gone",
    r.status === rb.status && r.text === rb.text, `${r.text} vs ${rb.text}`);
}

// A new tenant with the given admin body and one key: { id, key }.
async function tenantWithKey(body) {
  const r = await admin("POST", "/tenants", body);
  if (r.status !== 201) throw new Error(`cannot create tenant ${body.name}: ${r.text}`);
  const k = await admin("POST", `/tenants/${r.json.id}/keys`);
  return { id: r.json.id, key: k.json.key };
}

// A 429 with Retry-After in [lo, hi], the OpenAI error body and a message naming `what`
// once (no repeated "retry after").
function is429(r, what, lo = 1, hi = 86400) {
  const e = errorOf(r);
  const ra = Number(r.headers.get("retry-after"));
  return r.status === 429 && ra >= lo && ra <= hi && e.type === "rate_limit_error" &&
    e.code === "rate_limit_exceeded" && e.message.includes(what) &&
    (e.message.match(/retry after/g) || []).length <= 1;
}

// Token limits hold even against one request that asks for far more: each choice is
// capped to its share of what is left (finish_reason "length"), and the next request,
// for which nothing is left, is a 429.
async function tokenLimitChecks(model) {
  const ask = (key, extra) => http("POST", "/v1/chat/completions", { key, body: { model,
    messages: [{ role: "user", content: "Go" }], temperature: 1, seed: 1, ...extra } });
  const both = await tenantWithKey({ name: "lim-both", limits: { tpd: 100, tpm: 100 } });
  let r = await ask(both.key, { max_tokens: 300, n: 16 });
  const u = r.json?.usage;
  check("tpm+tpd: one request asking for 4800 tokens is held to 100", r.status === 200 &&
    u.total_tokens <= 100 && r.json.choices.length === 16 &&
    r.json.choices.some((c) => c.finish_reason === "length"), `${r.status} ${r.text.slice(-300)}`);
  r = await ask(both.key, { max_tokens: 300, n: 16 });
  check("tpm+tpd: the next request is 429 until midnight", is429(r, "tokens per day"),
    `${r.status} ${r.headers.get("retry-after")} ${r.text}`);

  const day = await tenantWithKey({ name: "lim-tpd", limits: { tpd: 60 } });
  r = await ask(day.key, { max_tokens: 200 });
  check("tpd: the first request of the day is capped too", r.status === 200 &&
    r.json.usage.total_tokens <= 60 && r.json.choices[0].finish_reason === "length", r.text);
  r = await ask(day.key, { max_tokens: 200 });
  check("tpd: then 429 with Retry-After and an OpenAI body", is429(r, "tokens per day limit 60"),
    `${r.status} ${r.text}`);

  const min = await tenantWithKey({ name: "lim-tpm", limits: { tpm: 60 } });
  r = await ask(min.key, { max_tokens: 200, stream: false });
  check("tpm: a request is capped to the minute's allowance", r.status === 200 &&
    r.json.usage.total_tokens <= 60 && r.json.choices[0].finish_reason === "length", r.text);
  const s = await sse("/v1/chat/completions", min.key, { model, max_tokens: 200,
    messages: [{ role: "user", content: "Go" }] });
  check("tpm: then 429 with Retry-After and an OpenAI body, streaming too", s.status === 429 &&
    s.json?.error?.code === "rate_limit_exceeded" &&
    s.json.error.message.includes("tokens per minute limit 60"), JSON.stringify(s.json));
  const tiny = await tenantWithKey({ name: "lim-tiny", limits: { tpm: 10 } });
  r = await ask(tiny.key, { max_tokens: 5 });
  check("tpm: a prompt larger than the whole limit is 429 saying it can never fit",
    is429(r, "more than the tokens per minute limit 10", 60, 60), `${r.status} ${r.text}`);
  r = await http("POST", "/v1/embeddings", { key: tiny.key, body: { input: "a cat ".repeat(20) } });
  check("tpm: embeddings are held to the limit too", is429(r, "tokens per minute limit 10"),
    `${r.status} ${r.text}`);
}

// concurrency: while one request of a tenant runs, a second is a 429 (Retry-After 1).
async function concurrencyLimitCheck(model) {
  const one = await tenantWithKey({ name: "lim-conc", limits: { concurrency: 1 } });
  const ac = new AbortController();
  let second = null;
  try {
    await sse("/v1/chat/completions", one.key, { model, max_tokens: 480, temperature: 1,
      messages: [{ role: "user", content: "Tell a long story" }] }, { signal: ac.signal,
      onFirst: async () => {
        second = await http("POST", "/v1/chat/completions", { key: one.key, body: { model,
          max_tokens: 2, messages: [{ role: "user", content: "hi" }] } });
        ac.abort();
      } });
  } catch {
    /* the abort */
  }
  check("concurrency: a second request while one runs is 429", second &&
    is429(second, "concurrent requests limit 1", 1, 1), second && second.text);
  // Let the aborted stream's cancellation land before disconnectCheck counts failures.
  for (let i = 0; i < 50 && (await metric("mcai_active_sequences")) !== 0; i++)
    await new Promise((r) => setTimeout(r, 100));
}

// The front's allowed_models holds for every route, with or without a model named; a
// template may use only the variables the server fills.
async function frontChecks() {
  const other = await tenantWithKey({ name: "other-model-only",
    front: { allowed_models: ["some-other-model"] } });
  let r = await http("POST", "/v1/embeddings", { key: other.key, body: { input: "a cat" } });
  check("allowed_models: embeddings without a model are 404 too", r.status === 404 &&
    errorOf(r).code === "model_not_found", r.text);
  r = await http("POST", "/v1/chat/completions", { key: other.key,
    body: { messages: [{ role: "user", content: "hi" }], max_tokens: 2 } });
  check("allowed_models: chat without a model is 404", r.status === 404 &&
    errorOf(r).code === "model_not_found", r.text);

  r = await admin("POST", "/tenants", { name: "bad-template", front: { template: "{{nope}}" } });
  check("a front template with an undefined variable is 400 naming it", r.status === 400 &&
    errorOf(r).param === "front" && errorOf(r).message.includes("'nope'"), r.text);
  r = await admin("PATCH", `/tenants/${other.id}`, { front: { template: "Q: {{input}} {{x}}" } });
  check("and so is an update to one", r.status === 400 && errorOf(r).param === "front" &&
    errorOf(r).message.includes("'x'"), r.text);
  r = await admin("PATCH", `/tenants/${other.id}`,
    { front: { template: "{{tenant}} on {{date}}: {{input}}" } });
  check("a template with the three variables is accepted", r.status === 200, r.text);
}

// Messages that name the problem exactly.
async function preciseErrorChecks(key, model) {
  let r = await admin("POST", "/tenants", { name: "a b" });
  check("a tenant name with a space says 'space'", r.status === 400 &&
    errorOf(r).message.includes("tenant name has a space (0x20) at byte 1"), r.text);
  const chat = (body) => http("POST", "/v1/chat/completions", { key, body: { model,
    max_tokens: 2, ...body } });
  r = await chat({ messages: [{ role: "user", content: null }] });
  check("null content of a user message is 400", r.status === 400 &&
    errorOf(r).param === "messages[0].content" && errorOf(r).code === "invalid_type", r.text);
  r = await chat({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: null },
    { role: "user", content: "go on" }] });
  check("null content of an assistant message is accepted", r.status === 200, r.text);
  r = await http("POST", "/v1/chat/completions", { key, raw: `{"model":"${model}",` +
    `"messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615}`,
    headers: { "content-type": "application/json" } });
  check("a seed beyond int64 is 400 naming seed and the range", r.status === 400 &&
    errorOf(r).param === "seed" && errorOf(r).code === "invalid_value" &&
    errorOf(r).message.includes("9223372036854775807"), r.text);
  r = await http("POST", "/v1/conversations", { key, body: { messages: [] } });
  check("a conversation created with messages: [] is empty, not a 400", r.status < 300 &&
    r.json.n_messages === 0, r.text);
}

async function metric(name) {
  const m = await http("GET", "/metrics");
  const line = m.text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.split(" ").at(-1)) : NaN;
}

async function disconnectCheck(keys, model) {
  const failedBefore = await metric("mcai_engine_requests_failed_total");
  const ac = new AbortController();
  try {
    await sse("/v1/chat/completions", keys.epsilon, { model, max_tokens: 480, temperature: 0.8,
      seed: 3, messages: [{ role: "user", content: "Tell a long story" }] },
      { signal: ac.signal, onFirst: async () => ac.abort() });
  } catch {
    /* the abort */
  }
  let failedAfter = failedBefore;
  let active = -1;
  for (let i = 0; i < 50; i++) {
    failedAfter = await metric("mcai_engine_requests_failed_total");
    active = await metric("mcai_active_sequences");
    if (failedAfter === failedBefore + 1 && active === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check("client disconnect cancels its sequence", failedAfter === failedBefore + 1 && active === 0,
    `failed ${failedBefore} -> ${failedAfter}, active ${active}`);
}

async function metricsChecks(t) {
  const m = await http("GET", "/metrics");
  const want = [
    `mcai_requests_total{tenant="${t.alpha.id}",route="/v1/chat/completions",status="200"}`,
    `mcai_rejections_total{tenant="${t.alpha.id}",reason="invalid_request"}`,
    `mcai_rejections_total{tenant="${t.gamma.id}",reason="rate_limit"}`,
    `mcai_completion_tokens_total{tenant="${t.alpha.id}"}`,
    `mcai_time_to_first_token_seconds_count{tenant="${t.alpha.id}"}`,
    `mcai_inter_token_seconds_bucket{tenant="${t.epsilon.id}",le="+Inf"}`,
    "mcai_queue_depth ",
    `mcai_tenant_queue_depth{tenant="${t.alpha.id}"} 0`,
    `mcai_tenant_active_sequences{tenant="${t.alpha.id}"} 0`,
    "mcai_process_resident_memory_bytes ",
  ];
  for (const w of want) check(`metrics: ${w.split("{")[0].trim()}`, m.text.includes(w), w);
}

async function main() {
  const h = await http("GET", "/healthz");
  eq("healthz", h.json, { status: "ok" });
  const { t, keys } = await adminChecks();

  const clientA = new OpenAI({ apiKey: keys.alpha, baseURL: BASE + "/v1", maxRetries: 0 });
  const models = await clientA.models.list();
  const model = models.data[0]?.id;
  check("models: list has the base model", models.data.length === 1 && !!model,
    JSON.stringify(models.data));
  const one = await clientA.models.retrieve(model);
  eq("models: retrieve", one.id, model);
  try {
    await clientA.chat.completions.create({ model: "no-such-model",
      messages: [{ role: "user", content: "x" }] });
    fail("unknown model is 404", "accepted");
  } catch (e) {
    check("unknown model is 404 model_not_found", e.status === 404 &&
      e.code === "model_not_found", e.message);
  }

  const textA = await chatChecks(clientA, model);
  const clientB = new OpenAI({ apiKey: keys.beta, baseURL: BASE + "/v1", maxRetries: 0 });
  const b = await clientB.chat.completions.create({ model, temperature: 0, max_tokens: 24,
    messages: [{ role: "user", content: "Once upon a time" }] });
  check("fronts: two tenants, same request, different answers (different fronts)",
    b.choices[0].message.content !== textA, b.choices[0].message.content);
  const bl = await clientB.chat.completions.create({ model, messages: [{ role: "user",
    content: "Once upon a time" }] });
  check("fronts: B's front caps max_tokens at 32", bl.usage.completion_tokens <= 32,
    JSON.stringify(bl.usage));

  await completionChecks(clientA, model);
  await embeddingChecks(clientA, model);
  const conv = await conversationChecks(keys, model);
  await isolationChecks(t, keys, model, conv);
  await adapterChecks(t, keys, model);
  await badInputWhileStreaming(keys, model);
  await concurrencyChecks(keys, model);
  await limitChecks(keys, model);
  await tokenLimitChecks(model);
  await concurrencyLimitCheck(model);
  await frontChecks();
  await preciseErrorChecks(keys.epsilon, model);
  await disconnectCheck(keys, model);
  await metricsChecks(t);

  // Deleting a tenant: its key stops working at once, its objects are gone.
  let r = await admin("DELETE", `/tenants/${t.beta.id}`);
  check("delete tenant", r.status === 200 && r.json.deleted === true, r.text);
  r = await http("GET", "/v1/models", { key: keys.beta });
  check("deleted tenant's key is 401", r.status === 401, r.text);
  r = await admin("GET", `/tenants/${t.beta.id}`);
  check("deleted tenant is 404", r.status === 404, r.text);
}

try {
  await main();
} catch (e) {
  fail("unexpected exception", e.stack || String(e));
}
console.log(`node checks: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
