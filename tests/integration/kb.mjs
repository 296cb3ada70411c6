// kb.mjs - knowledge-base checks against a running `mcai serve` (run.sh starts it and
// passes MCAI_BASE and MCAI_ADMIN_KEY): ingestion of text, Markdown and HTML with ids
// that hold unicode, quotes, slashes and '?', raw uploads, 415, 400 for a duplicate id
// in a batch (with nothing written), 409 then upsert, replace and delete, ranked search,
// chat and completions grounded with citations (request field and front setting, whole
// and streamed), isolation between two tenants, 401 without a key, and a deleted
// tenant's knowledge base leaving memory, rate limits. Prints "ok - ..." / "FAIL - ..." lines and
// "kb checks: N passed, M failed".
import OpenAI from "openai";
import { httpClient } from "./http.mjs";

const BASE = process.env.MCAI_BASE;
const ADMIN = process.env.MCAI_ADMIN_KEY;

let passed = 0;
let failed = 0;
function check(name, cond, why) {
  if (cond) {
    passed++;
    console.log(`ok - kb: ${name}`);
  } else {
    failed++;
    console.log(`FAIL - kb: ${name}: ${why === undefined ? "condition false" : why}`);
  }
  return cond;
}

const http = httpClient(BASE);
const admin = (method, path, body) => http(method, "/admin" + path, { key: ADMIN, body });
const docPath = (id) => `/v1/kb/documents?id=${encodeURIComponent(id)}`;
const err = (r) => (r.json && r.json.error ? r.json.error : {});
// Byte order of ids, as the server lists them.
const byteSort = (ids) => [...ids].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));

async function tenant(name, front) {
  const t = await admin("POST", "/tenants", front ? { name, front } : { name });
  const k = await admin("POST", `/tenants/${t.json.id}/keys`);
  return { id: t.json.id, key: k.json.key };
}

async function listIds(key) {
  const r = await http("GET", "/v1/kb/documents", { key });
  return r.json?.data?.map((d) => d.id);
}

// ---- Ingestion ---------------------------------------------------------------------

const ID_TXT = 'notes/ünïcödé "quoted" \'single\' \\back.txt';
const ID_MD = "guide/dogs?.md#anchor";
const ID_HTML = "web/fish & chips/ページ.html";
const ID_RAW = 'raw/"upload" 100% + plus.md';

async function ingestChecks(A) {
  const batch = [
    { id: ID_TXT, title: "Cats", text: "Cats purr when they are content and nap in the sun.",
      metadata: { team: "felines", n: 3 } },
    { id: ID_MD, content: "---\ntitle: Dog guide\n---\n# Dogs\n\n## Barking\n\nDogs bark at " +
      "the mailman because he walks past their territory every day.",
      content_type: "text/markdown" },
    { id: ID_HTML, content: "<html><head><title>Fish page</title><script>var hidden = 1;" +
      "</script></head><body><h1>Fish</h1><p>Salmon swim upstream to spawn.</p></body></html>",
      content_type: "text/html; charset=utf-8" },
  ];
  let r = await http("POST", "/v1/kb/documents", { key: A.key, body: batch });
  check("ingest a batch of text, markdown and html", r.status === 200 && r.json.added === 3 &&
    r.json.chunks >= 3, r.text);
  check("ingest echoes the ids byte for byte", JSON.stringify(r.json?.ids) ===
    JSON.stringify([ID_TXT, ID_MD, ID_HTML]), r.text);

  r = await http("POST", `${docPath(ID_RAW)}&title=${encodeURIComponent("Raw upload")}`, {
    key: A.key, raw: "# Parrots\n\nParrots mimic human speech.", ctype: "text/markdown" });
  check("raw upload of one file with its Content-Type", r.status === 200 && r.json.added === 1,
    r.text);

  r = await http("GET", "/v1/kb/documents", { key: A.key });
  const want = byteSort([ID_TXT, ID_MD, ID_HTML, ID_RAW]);
  check("list returns every id byte for byte, in byte order",
    JSON.stringify(r.json?.data?.map((d) => d.id)) === JSON.stringify(want), r.text);
  const byId = Object.fromEntries((r.json?.data || []).map((d) => [d.id, d]));
  check("list: content types", byId[ID_TXT]?.content_type === "text/plain" &&
    byId[ID_MD]?.content_type === "text/markdown" && byId[ID_HTML]?.content_type === "text/html",
    r.text);
  check("list: titles from the caller, front matter and <title>", byId[ID_TXT]?.title === "Cats" &&
    byId[ID_MD]?.title === "Dog guide" && byId[ID_HTML]?.title === "Fish page" &&
    byId[ID_RAW]?.title === "Raw upload", r.text);
  check("list: metadata kept", byId[ID_TXT]?.metadata?.team === "felines" &&
    byId[ID_TXT]?.metadata?.n === 3, JSON.stringify(byId[ID_TXT]));

  for (const id of [ID_TXT, ID_MD, ID_HTML, ID_RAW]) {
    r = await http("GET", docPath(id), { key: A.key });
    check(`get ${JSON.stringify(id)} returns the same id`, r.status === 200 && r.json.id === id,
      r.text);
  }
  r = await http("GET", docPath(ID_HTML), { key: A.key });
  check("html: text without markup or script", r.json?.text?.includes("Salmon swim upstream") &&
    !r.json.text.includes("<p>") && !r.json.text.includes("hidden"), r.text);
  r = await http("GET", docPath(ID_MD), { key: A.key });
  check("markdown: headings kept, front matter cut", r.json?.text?.startsWith("# Dogs") &&
    !r.json.text.includes("title: Dog guide"), r.text);

  // 415, in a batch and as a raw upload; nothing is written.
  r = await http("POST", "/v1/kb/documents", { key: A.key, body: [{ id: "new-pdf",
    content: "%PDF-1.4", content_type: "application/pdf" }] });
  check("unsupported content type in a batch is 415", r.status === 415 &&
    err(r).code === "unsupported_media_type" && err(r).type === "invalid_request_error", r.text);
  r = await http("POST", docPath("new.pdf"), { key: A.key, raw: "%PDF-1.4",
    ctype: "application/pdf" });
  check("unsupported raw upload is 415", r.status === 415, r.text);

  // A duplicate id within one batch: 400, nothing written (not even the other document).
  r = await http("POST", "/v1/kb/documents", { key: A.key, body: { documents: [
    { id: "fresh-1", text: "first" }, { id: "dup", text: "a" }, { id: "dup", text: "b" }] } });
  check("duplicate id within a batch is 400", r.status === 400 &&
    err(r).code === "duplicate_id" && err(r).param === "documents[2].id", r.text);
  check("after the 400, list shows nothing new", JSON.stringify(await listIds(A.key)) ===
    JSON.stringify(want));

  // An existing id: 409 (nothing written), then upsert replaces it.
  r = await http("POST", "/v1/kb/documents", { key: A.key, body: [
    { id: "fresh-2", text: "new one" }, { id: ID_TXT, text: "Cats sleep sixteen hours." }] });
  check("existing id is 409", r.status === 409 && err(r).code === "document_exists", r.text);
  check("after the 409, list shows nothing new", JSON.stringify(await listIds(A.key)) ===
    JSON.stringify(want));
  r = await http("POST", "/v1/kb/documents?upsert=true", { key: A.key, body: [
    { id: ID_TXT, title: "Cats", text: "Cats purr when they are content. Cats sleep sixteen " +
      "hours a day." }] });
  check("upsert replaces", r.status === 200 && r.json.replaced === 1 && r.json.added === 0, r.text);
  r = await http("GET", docPath(ID_TXT), { key: A.key });
  check("get shows the replaced text", r.json?.text?.includes("sixteen hours"), r.text);
  r = await http("PUT", docPath(ID_RAW), { key: A.key, raw: "Parrots mimic speech and " +
    "whistle tunes.", ctype: "text/plain" });
  check("PUT replaces an existing document", r.status === 200 && r.json.replaced === 1, r.text);
  r = await http("PUT", docPath("never-there"), { key: A.key, raw: "x", ctype: "text/plain" });
  check("PUT of a missing id is 404", r.status === 404 && err(r).code === "document_not_found",
    r.text);

  // Malformed bodies.
  r = await http("POST", "/v1/kb/documents", { key: A.key, raw: '[{"id": "x",',
    ctype: "application/json" });
  check("malformed JSON is 400", r.status === 400 && err(r).code === "invalid_json", r.text);
  r = await http("POST", "/v1/kb/documents?id=q1&id=q2", { key: A.key, raw: "x",
    ctype: "text/plain" });
  check("a repeated ?id= is 400 naming it", r.status === 400 && err(r).param === "id" &&
    err(r).message.includes("more than once"), r.text);
  r = await http("DELETE", "/v1/kb/documents?id=q1&id=q2", { key: A.key });
  check("a DELETE with two ids is 400 too", r.status === 400 && err(r).param === "id", r.text);
  r = await http("POST", "/v1/kb/documents?id=q3&titel=Notes", { key: A.key, raw: "x",
    ctype: "text/plain" });
  check("a misspelt query parameter is 400 unknown_field", r.status === 400 &&
    err(r).code === "unknown_field" && err(r).param === "titel", r.text);
  r = await http("GET", "/v1/kb/documents?id=q3", { key: A.key });
  check("and nothing was stored", r.status === 404, r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key,
    raw: '{"documents":[{"id":"q4","text":"x"}],"upsrt":true}', ctype: "application/json" });
  check("an unknown batch field names itself as param", r.status === 400 &&
    err(r).code === "unknown_field" && err(r).param === "upsrt", r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key, raw: "x", ctype: "text/plain" });
  check("a raw upload without ?id= is 400 asking for the id", r.status === 400 &&
    err(r).code === "missing_field" && err(r).param === "id" &&
    err(r).message.includes("needs ?id="), r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key, raw: '[{"id":"x","text":"a\\u0000b"}]',
    ctype: "application/json" });
  check("a \\u0000 in a string is 400 in plain words", r.status === 400 &&
    err(r).message.includes("a NUL character (\\u0000) is not allowed in strings") &&
    !err(r).message.includes("JSON_ALLOW_NUL"), r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key,
    raw: Buffer.from('[{"id":"x","text":"\xc3\x28"}]', "latin1"), ctype: "application/json" });
  check("bad UTF-8 is 400", r.status === 400 && err(r).code === "invalid_utf8", r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key, body: [{ id: "x", txet: "typo" }] });
  check("unknown document field is 400 naming it", r.status === 400 &&
    err(r).param === "documents[0].txet", r.text);
  // HTML nested past libxml2's default 256 levels keeps its text; past 1024 it is refused,
  // on a connection thread's small stack too.
  const deep = (n) => "<html><body>" + "<div>".repeat(n) + "deepword";
  r = await http("POST", docPath("deep.html"), { key: A.key, raw: deep(600), ctype: "text/html" });
  const dg = await http("GET", docPath("deep.html"), { key: A.key });
  check("html nested 600 deep keeps its text", r.status === 200 &&
    dg.json?.text?.includes("deepword"), r.text);
  await http("DELETE", docPath("deep.html"), { key: A.key });
  r = await http("POST", docPath("deeper.html"), { key: A.key, raw: deep(20000),
    ctype: "text/html" });
  check("html nested 20000 deep is 400", r.status === 400 && err(r).code === "invalid_document",
    r.text);
  r = await http("POST", "/v1/kb/documents", { key: A.key, body: [{ id: "x" }] });
  check("a document without text or content is 400", r.status === 400, r.text);
  check("after the bad bodies, list shows nothing new", JSON.stringify(await listIds(A.key)) ===
    JSON.stringify(want));
}

// ---- Search and grounded answers ---------------------------------------------------

async function searchChecks(A) {
  let r = await http("POST", "/v1/kb/search", { key: A.key, body: {
    query: "why do dogs bark at the mailman", mode: "bm25", k: 3 } });
  const top = r.json?.data?.[0];
  check("search ranks the right document first", r.status === 200 && top?.document_id === ID_MD,
    r.text);
  check("a hit has chunk id, score, span and text", Number.isInteger(top?.chunk_id) &&
    top?.score > 0 && top?.end > top?.start && typeof top?.text === "string", r.text);
  const doc = await http("GET", docPath(ID_MD), { key: A.key });
  const bytes = Buffer.from(doc.json?.text || "");
  check("the span is the chunk's bytes in the document",
    bytes.subarray(top?.start, top?.end).toString() === top?.text, JSON.stringify(top));
  for (const mode of ["dense", "hybrid"]) {
    r = await http("POST", "/v1/kb/search", { key: A.key, body: { query: "salmon", mode, k: 2 } });
    check(`search mode ${mode} gives k hits`, r.status === 200 && r.json.mode === mode &&
      r.json.data.length === 2, r.text);
  }
  r = await http("POST", "/v1/kb/search", { key: A.key, body: { query: "x", mode: "nope" } });
  check("bad mode is 400", r.status === 400 && err(r).param === "mode", r.text);
  r = await http("POST", "/v1/kb/search", { key: A.key, body: { query: "x", k: 0 } });
  check("k out of range is 400", r.status === 400 && err(r).param === "k", r.text);
}

async function groundedChecks(A) {
  const client = new OpenAI({ baseURL: BASE + "/v1", apiKey: A.key, maxRetries: 0 });
  const base = { model: "stories260K", temperature: 0, max_tokens: 8,
    messages: [{ role: "user", content: "Why do dogs bark at the mailman?" }] };

  const c = await client.chat.completions.create({ ...base,
    retrieval: { mode: "bm25", k: 2 } });
  const cit = c.mcai_citations;
  check("chat with retrieval returns citations", Array.isArray(cit) && cit.length >= 1, 
    JSON.stringify(c));
  check("the first citation names A's document", cit?.[0]?.document_id === ID_MD &&
    cit[0].index === 1 && Number.isInteger(cit[0].chunk_id) && cit[0].end > cit[0].start,
    JSON.stringify(cit));
  check("the grounded prompt is larger than the question", c.usage.prompt_tokens > 40,
    JSON.stringify(c.usage));

  const plain = await client.chat.completions.create(base);
  check("chat without retrieval has no citations", plain.mcai_citations === undefined,
    JSON.stringify(plain));

  // Streaming: one chunk with the citations and no choices, before [DONE].
  const stream = await client.chat.completions.create({ ...base, stream: true,
    retrieval: { mode: "bm25", k: 1 } });
  let streamed = null;
  let text = "";
  for await (const ch of stream) {
    if (ch.mcai_citations) streamed = ch.mcai_citations;
    text += ch.choices[0]?.delta?.content || "";
  }
  check("a stream carries the citations in a chunk", streamed?.length === 1 &&
    streamed[0].document_id === ID_MD, JSON.stringify(streamed));

  // A conversation keeps the question as asked, not the grounded prompt.
  let cv = await http("POST", "/v1/conversations", { key: A.key, body: {} });
  await client.chat.completions.create({ ...base, conversation: cv.json.id,
    retrieval: { mode: "bm25", k: 2 } });
  cv = await http("GET", `/v1/conversations/${cv.json.id}/messages`, { key: A.key });
  check("a grounded chat stores the question as asked in its conversation",
    cv.json?.data?.[0]?.content === base.messages[0].content && cv.json.data.length === 2,
    cv.text);

  // Completions take the same field.
  const comp = await client.completions.create({ model: "stories260K", prompt: "Salmon",
    max_tokens: 4, temperature: 0, retrieval: { mode: "bm25", k: 1 } });
  check("completions with retrieval return citations",
    comp.mcai_citations?.[0]?.document_id === ID_HTML, JSON.stringify(comp));

  // The front turns it on; the request can turn it off.
  let r = await admin("PATCH", `/tenants/${A.id}`, { front: { retrieval: { k: 1, mode: "bm25" } } });
  check("front with retrieval settings", r.status === 200, r.text);
  const f = await client.chat.completions.create(base);
  check("front retrieval: citations without a request field", f.mcai_citations?.length === 1 &&
    f.mcai_citations[0].document_id === ID_MD, JSON.stringify(f));
  const off = await client.chat.completions.create({ ...base, retrieval: false });
  check("request retrieval:false turns the front's off", off.mcai_citations === undefined,
    JSON.stringify(off));
  r = await admin("PATCH", `/tenants/${A.id}`, { front: { retrieval: { k: "four" } } });
  check("front retrieval with a wrong type is 400", r.status === 400 &&
    err(r).message.includes("retrieval.k"), r.text);
  r = await admin("PATCH", `/tenants/${A.id}`, { front: { retrieval: { top: 3 } } });
  check("front retrieval with an unknown field is 400", r.status === 400 &&
    err(r).message.includes("retrieval.top"), r.text);
  r = await http("POST", "/v1/chat/completions", { key: A.key, body: { ...base,
    retrieval: { k: 99 } } });
  check("request retrieval out of range is 400", r.status === 400 &&
    err(r).param === "retrieval", r.text);
  r = await admin("PATCH", `/tenants/${A.id}`, { front: {} });
}

// ---- Isolation ---------------------------------------------------------------------

async function isolationChecks(A, B) {
  const SECRET = "xylophonequokka";
  let r = await http("POST", "/v1/kb/documents", { key: B.key, body: [
    { id: "b-secret", title: "B only", text: `The ${SECRET} lives in tenant B's archive.` },
    { id: ID_MD, text: `B's own ${SECRET} page under an id A also uses.` }] });
  check("B ingests its own documents", r.status === 200 && r.json.added === 2, r.text);

  for (const mode of ["bm25", "dense", "hybrid"]) {
    r = await http("POST", "/v1/kb/search", { key: A.key, body: { query: SECRET, mode,
      k: 1000 } });
    const ids = (r.json?.data || []).map((h) => h.document_id);
    check(`A's ${mode} search never returns B's documents`, r.status === 200 &&
      !ids.includes("b-secret") && !(r.json.data || []).some((h) => h.text?.includes(SECRET)),
      r.text);
    if (mode === "bm25")
      check("A's bm25 search for B's unique word has zero hits", r.json?.data?.length === 0,
        r.text);
  }
  r = await http("POST", "/v1/kb/search", { key: B.key, body: { query: SECRET, mode: "bm25" } });
  check("B finds its own word", r.json?.data?.length === 2, r.text);

  const missing = await http("GET", docPath("never-existed"), { key: A.key });
  for (const [m, extra] of [["GET", {}], ["DELETE", {}],
    ["PUT", { raw: "x", ctype: "text/plain" }]]) {
    const theirs = await http(m, docPath("b-secret"), { key: A.key, ...extra });
    const none = await http(m, docPath("never-existed"), { key: A.key, ...extra });
    check(`${m} of B's id with A's key is 404 exactly like a missing id`,
      theirs.status === 404 && theirs.text === none.text && none.text === missing.text,
      `${theirs.text} vs ${none.text}`);
  }
  r = await http("GET", docPath(ID_MD), { key: A.key });
  check("an id both tenants use gives A its own document", r.json?.text?.includes("mailman") &&
    !r.json.text.includes(SECRET), r.text);
  const c = await new OpenAI({ baseURL: BASE + "/v1", apiKey: A.key, maxRetries: 0 })
    .chat.completions.create({ model: "stories260K", max_tokens: 4, temperature: 0,
      messages: [{ role: "user", content: `Tell me about the ${SECRET}` }],
      retrieval: { k: 50 } });
  check("A's grounded chat never cites B's documents", (c.mcai_citations || []).every((h) =>
    h.document_id !== "b-secret" && !h.text.includes(SECRET)), JSON.stringify(c.mcai_citations));
  check("B's documents are all still there", JSON.stringify(await listIds(B.key)) ===
    JSON.stringify(byteSort(["b-secret", ID_MD])));

  // No tenant, no knowledge base.
  for (const [m, p] of [["GET", "/v1/kb/documents"], ["POST", "/v1/kb/search"],
    ["GET", docPath("b-secret")], ["DELETE", docPath("b-secret")]]) {
    r = await http(m, p, { body: m === "POST" ? { query: SECRET } : undefined });
    check(`${m} ${p.split("?")[0]} without a key is 401`, r.status === 401 &&
      err(r).code === "invalid_api_key", r.text);
    r = await http(m, p, { key: "mcai_notarealkey0000000000000000000000000000000",
      body: m === "POST" ? { query: SECRET } : undefined });
    check(`${m} ${p.split("?")[0]} with a wrong key is 401`, r.status === 401, r.text);
  }
}

async function deleteChecks(A, B) {
  let r = await http("DELETE", docPath(ID_HTML), { key: A.key });
  check("delete a document", r.status === 200 && r.json.deleted === true && r.json.id === ID_HTML,
    r.text);
  r = await http("GET", docPath(ID_HTML), { key: A.key });
  check("a deleted document is 404", r.status === 404, r.text);
  r = await http("POST", "/v1/kb/search", { key: A.key, body: { query: "salmon spawn",
    mode: "hybrid", k: 1000 } });
  check("a deleted document is never returned", r.status === 200 &&
    !r.json.data.some((h) => h.document_id === ID_HTML), r.text);

  // Deleting a tenant removes its knowledge base from memory too.
  const loaded = async () => {
    const m = await http("GET", "/metrics");
    const line = m.text.split("\n").find((l) => l.startsWith("mcai_kb_loaded "));
    return line ? Number(line.split(" ")[1]) : NaN;
  };
  const before = await loaded();
  r = await admin("DELETE", `/tenants/${B.id}`);
  check("delete tenant B", r.status === 200, r.text);
  const after = await loaded();
  check("B's knowledge base left memory with the tenant", before >= 2 && after === before - 1,
    `before ${before}, after ${after}`);
  r = await http("GET", "/v1/kb/documents", { key: B.key });
  check("B's key no longer reaches any knowledge base", r.status === 401, r.text);
}

// The tenant's request rate limit covers its knowledge-base routes too.
async function limitChecks() {
  const t = await admin("POST", "/tenants", { name: "kb-limited", limits: { rpm: 1 } });
  const k = await admin("POST", `/tenants/${t.json.id}/keys`);
  let r = await http("GET", "/v1/kb/documents", { key: k.json.key });
  check("a limited tenant's first request passes", r.status === 200, r.text);
  const res = await fetch(BASE + "/v1/kb/search", { method: "POST",
    headers: { authorization: `Bearer ${k.json.key}` }, body: JSON.stringify({ query: "x" }) });
  const body = await res.json();
  check("over its rpm a knowledge-base request is 429 with Retry-After", res.status === 429 &&
    body.error?.code === "rate_limit_exceeded" && Number(res.headers.get("retry-after")) >= 1,
    JSON.stringify(body));
}

async function main() {
  const A = await tenant("kb-alpha");
  const B = await tenant("kb-beta");
  await ingestChecks(A);
  await searchChecks(A);
  await groundedChecks(A);
  await isolationChecks(A, B);
  await deleteChecks(A, B);
  await limitChecks();
}

try {
  await main();
} catch (e) {
  check("unexpected exception", false, e.stack || String(e));
}
console.log(`kb checks: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
