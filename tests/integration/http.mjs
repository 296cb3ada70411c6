// http.mjs - the raw fetch helper that client.mjs and kb.mjs share.
//
// http(method, path, { key, body, raw, ctype, headers }) sends body as JSON, or raw as
// it is (a string, a Buffer or a FormData, whose multipart type fetch sets) with ctype
// as its content type when given, and answers { status, headers, text, json }, json
// being null when the answer is not JSON (metrics, SSE, an HTML error page).
export function httpClient(base) {
  return async function http(method, path, { key, body, raw, ctype, headers } = {}) {
    const h = { ...(headers || {}) };
    if (key) h.authorization = `Bearer ${key}`;
    let data;
    if (raw !== undefined) {
      data = raw;
      if (ctype) h["content-type"] = ctype;
    } else if (body !== undefined) {
      data = JSON.stringify(body);
      h["content-type"] = ctype || "application/json";
    }
    const res = await fetch(base + path, { method, headers: h, body: data });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, headers: res.headers, text, json };
  };
}
