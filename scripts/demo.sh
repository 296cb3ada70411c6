#!/bin/sh
# The main job (`make demo`): starts `mcai serve` on a small model, creates two tenants
# with different fronts through the admin API, gives each an API key, and shows each
# tenant answering its own chat request with its own key - through the official openai
# client when tests/integration/node_modules has it (scripts/install-deps.sh installs it),
# else with curl. Each tenant then fills its own knowledge base with a few pages of
# ../shared/data/enterprise_docs (when present) and asks a grounded question; the
# answer names its sources. Then it stops the server with SIGTERM.
#
# MODEL=path/to/model.gguf picks another model; PORT=N a fixed port (default: a free one).
# Keys are made up for the run and the data directory is temporary.
set -eu
cd "$(dirname "$0")/.."
MODEL=${MODEL:-../shared/models/stories260K.gguf}
MCAI=${MCAI:-./build/mcai}
[ -x "$MCAI" ] || { echo "demo: no $MCAI; run make first" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "demo: no model at $MODEL (set MODEL=...)" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/mcai-demo.XXXXXX")
PID=""
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }
# field NAME: the string value of NAME in the one-line JSON on stdin, unescaped. A value
# may hold escaped quotes ("He said \"hi\""), so the match steps over \x pairs; \uXXXX
# escapes stay as they are.
field() {
    sed -n "s/.*\"$1\":\"\(\([^\"\\\\]\|\\\\.\)*\)\".*/\1/p" |
        sed 's/\\n/\n/g; s/\\t/\t/g; s/\\"/"/g; s/\\\//\//g; s/\\\\/\\/g'
}

# 1. Keys: the master key lives in a file outside the data directory, mode 0600.
hex 32 > "$DIR/master.key"
chmod 600 "$DIR/master.key"
ADMIN=$(hex 24)

# 2. Start the server.
echo "== starting mcai serve on $MODEL"
MCAI_ADMIN_KEY=$ADMIN "$MCAI" serve -m "$MODEL" --data "$DIR/data" --port "${PORT:-0}" \
    --master-key-file "$DIR/master.key" > "$DIR/out" 2> "$DIR/server.log" &
PID=$!
i=0
BASE=""
while [ $i -lt 300 ]; do
    BASE=$(sed -n 's/^mcai serve: listening on \(http:.*\)$/\1/p' "$DIR/out" 2> /dev/null ||
        true)
    [ -n "$BASE" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz")" = 200 ] &&
        break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    sleep 0.1
    i=$((i + 1))
done
echo "   $(curl -s "$BASE/readyz") at $BASE"

# 3. Two tenants, each with its own front, and a key for each.
admin() { curl -s -X "$1" -H "Authorization: Bearer $ADMIN" "$BASE/admin$2" ${3:+-d "$3"}; }
echo
echo "== creating tenants through the admin API"
FRONT1='{"system_prompt":"You are a pirate. Answer every question like a pirate.",
  "sampling":{"temperature":0.7,"seed":7},"max_tokens":48}'
FRONT2='{"system_prompt":"You tell gentle bedtime stories to children.",
  "template":"Tell a short story about {{input}}.",
  "sampling":{"temperature":0.9,"seed":11},"max_tokens":64}'
T1=$(admin POST /tenants "{\"name\":\"pirate-shop\",\"front\":$FRONT1}" | field id)
T2=$(admin POST /tenants "{\"name\":\"bedtime-stories\",\"front\":$FRONT2,
  \"limits\":{\"rpm\":60}}" | field id)
[ -n "$T1" ] && [ -n "$T2" ] || { echo "demo: creating the tenants failed" >&2; exit 1; }
K1=$(admin POST "/tenants/$T1/keys" | field key)
K2=$(admin POST "/tenants/$T2/keys" | field key)
echo "   pirate-shop     $T1  key $(printf '%s' "$K1" | cut -c1-13)...  front: $FRONT1" |
    tr -s ' \n' ' '
echo
echo "   bedtime-stories $T2  key $(printf '%s' "$K2" | cut -c1-13)...  front: $FRONT2" |
    tr -s ' \n' ' '
echo
MODEL_ID=$(curl -s -H "Authorization: Bearer $K1" "$BASE/v1/models" | field id)

# 4. Each tenant chats with its own key.
echo
QUESTION="a little dog who found a treasure"
if [ -f tests/integration/node_modules/openai/package.json ] && command -v node > /dev/null; then
    echo "== each tenant asks through the official openai client: \"$QUESTION\""
    cat > "$DIR/chat.mjs" <<'EOF'
const { default: OpenAI } = await import(process.env.OPENAI_MODULE);
for (const [name, key] of [["pirate-shop", process.env.K1], ["bedtime-stories", process.env.K2]]) {
  const client = new OpenAI({ apiKey: key, baseURL: process.env.BASE + "/v1" });
  const stream = await client.chat.completions.create({
    model: process.env.MODEL_ID, stream: true, stream_options: { include_usage: true },
    messages: [{ role: "user", content: process.env.QUESTION }],
  });
  process.stdout.write(`\n-- ${name} (streaming):\n`);
  let usage;
  for await (const chunk of stream) {
    process.stdout.write(chunk.choices[0]?.delta?.content || "");
    if (chunk.usage) usage = chunk.usage;
  }
  process.stdout.write(`\n   [${usage.prompt_tokens} prompt + ${usage.completion_tokens} ` +
    `completion tokens]\n`);
}
EOF
    OPENAI_MODULE="$PWD/tests/integration/node_modules/openai/index.mjs" BASE=$BASE K1=$K1 \
        K2=$K2 MODEL_ID=$MODEL_ID QUESTION=$QUESTION node "$DIR/chat.mjs"
else
    echo "== each tenant asks with curl (install the openai client with" \
        "scripts/install-deps.sh to use it): \"$QUESTION\""
    for pair in "pirate-shop:$K1" "bedtime-stories:$K2"; do
        name=${pair%%:*}
        key=${pair#*:}
        echo
        echo "-- $name:"
        curl -s -H "Authorization: Bearer $key" "$BASE/v1/chat/completions" \
            -d "{\"model\":\"$MODEL_ID\",\"messages\":[{\"role\":\"user\",\"content\":\"$QUESTION\"}]}" |
            field content
    done
fi

# 5. Knowledge bases: each tenant uploads a few pages of its own document set and asks
# a question grounded in them; the answer names its sources in "mcai_citations".
DOCS=${DOCS:-../shared/data/enterprise_docs}
if [ -d "$DOCS/18f_handbook" ] && [ -d "$DOCS/curl_docs" ]; then
    echo
    echo "== knowledge bases: pirate-shop holds 18F handbook pages, bedtime-stories curl docs"
    upload() { # KEY FILE
        curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" \
            -H 'Content-Type: text/markdown' --data-binary @"$2" \
            --url-query "id=$(basename "$2")" "$BASE/v1/kb/documents"
    }
    n=0
    for f in general-information-and-resources_employee-resources-policies_transit-benefit.md \
        general-information-and-resources_new-york-city.md; do
        [ "$(upload "$K1" "$DOCS/18f_handbook/$f")" = 200 ] && n=$((n + 1))
    done
    for f in ALTSVC.md SSLCERTS.md; do
        [ "$(upload "$K2" "$DOCS/curl_docs/$f")" = 200 ] && n=$((n + 1))
    done
    echo "   $n documents ingested over POST /v1/kb/documents"
    ask() { # KEY QUESTION
        curl -s -H "Authorization: Bearer $1" "$BASE/v1/chat/completions" -d "{\"max_tokens\":16,
          \"messages\":[{\"role\":\"user\",\"content\":\"$2\"}],
          \"retrieval\":{\"mode\":\"bm25\",\"k\":2}}" |
            grep -o '"document_id":"[^"]*","chunk_id":[0-9]*' | sed 's/^/   cites /'
    }
    echo "-- pirate-shop: \"How do I cancel my transit benefit?\""
    ask "$K1" "How do I cancel my transit benefit?"
    echo "-- bedtime-stories: \"Where does curl keep the alt-svc cache?\""
    ask "$K2" "Where does curl keep the alt-svc cache?"
    echo "-- pirate-shop searches for \"alt-svc cache\" with its own key (bedtime-stories' pages" \
        "are out of reach):"
    curl -s -H "Authorization: Bearer $K1" "$BASE/v1/kb/search" \
        -d '{"query":"alt-svc cache","mode":"bm25","text":false}' | sed 's/^/   /'
    echo
fi

# 6. Each tenant sees only its own usage; a key of one tenant cannot reach the other.
echo
echo "== usage as each tenant sees it (GET /v1/usage)"
curl -s -H "Authorization: Bearer $K1" "$BASE/v1/usage" | sed 's/"data".*"total"/"total"/'
echo
curl -s -H "Authorization: Bearer $K2" "$BASE/v1/usage" | sed 's/"data".*"total"/"total"/'
echo
echo
echo "== stopping the server (SIGTERM)"
kill -TERM "$PID"
wait "$PID" && echo "   server exited cleanly" || echo "   server exited with status $?"
PID=""
