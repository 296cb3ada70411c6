#!/bin/sh
# run.sh - integration test of `mcai serve`: starts a real server on a free port with a
# temporary data directory and drives it with curl and with the official openai npm
# client (client.mjs). Checks, in order:
#   - start-up: --help, refusal (exit 2) without a master key and with a weak admin key,
#     precedence flags > environment > config file;
#   - curl: health, readiness, metrics, 401, a 10 MB body (413), invalid UTF-8 (400),
#     raw SSE framing;
#   - curl: a LoRA adapter uploaded as multipart/form-data answers like
#     `mcai generate --lora`; `mcai adapter` on the running server's data directory;
#   - client.mjs: the admin API, the OpenAI API (chat, streaming, stop, n, seed,
#     logprobs, completions, embeddings, models, conversations), isolation between
#     tenants, revocation, limits, bad input while another tenant streams, disconnects,
#     LoRA adapters (GGUF and PEFT uploads, model=<adapter> against `mcai generate
#     --lora`, other tenants, bad uploads, replace, delete during a stream, publish, pin);
#   - kb.mjs: the knowledge-base API (ingest, list, get, replace, delete, search),
#     grounded chat with citations, isolation between tenants' knowledge bases;
#   - `mcai kb ingest|search|list` on a data directory of its own (TREC output, the
#     progress bar on a terminal, number errors);
#   - SIGTERM during a stream: the stream gets one error event, the server exits 0;
#   - a second server (--ctx 2048): /readyz while the model loads, a non-streaming client
#     that leaves, queue_full, and a drain that keeps answering 503 shutting_down until
#     the running generation ends;
#   - a third server with --embed-model (embeddings and knowledge-base vectors from
#     another model) and a fourth with --kb-embeddings off (BM25-only knowledge bases)
#     and --adapter-format q8_0 (resident adapters converted to Q8_0);
#   - a server killed (SIGKILL) during a large knowledge-base ingest comes back with the
#     knowledge base as it was before the batch; a server on knowledge bases filled
#     without vectors answers searches without a mode with bm25.
# Environment: MCAI (the mcai binary, default build/mcai), MODEL (default
# $MCAI_SHARED/models/stories260K.gguf), MCAI_QUICK=1 for shorter generations (set
# automatically for the ASan build). Prints "ok - ..." / "FAIL - ..." lines and a final
# "integration: N passed, M failed"; exits 1 if anything failed.
set -u
cd "$(dirname "$0")/../.."
MCAI=${MCAI:-build/mcai}
SHARED=${MCAI_SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/stories260K.gguf}
LORA=$SHARED/models/stories260K-lora-r4.gguf
LORA_PEFT=$SHARED/models/stories260K-lora-r4-peft
case "$MCAI" in *build-san*) MCAI_QUICK=${MCAI_QUICK:-1} ;; esac
MCAI_QUICK=${MCAI_QUICK:-0}
CTX=512

DIR=$(mktemp -d "${TMPDIR:-/tmp}/mcai-int.XXXXXX")
PID=""
PID2=""
cleanup() {
    [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null
    [ -n "$PID2" ] && kill -KILL "$PID2" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "FAIL - $1: $2"; }
# check NAME WANT GOT
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "want '$2', got '$3'"; fi; }
# contains NAME FILE TEXT
contains() { if grep -qF -- "$3" "$2"; then ok "$1"; else bad "$1" "no '$3' in $(head -c 300 "$2")"; fi; }

hex() { od -An -tx1 -N "$1" /dev/urandom | tr -d ' \n'; }

# scripts/demo.sh reads answers with its field() when node is absent: an escaped quote
# in the answer must not cut it short.
eval "$(awk '/^field\(\) \{/ { f = 1 } f { print } f && /\}$/ { exit }' scripts/demo.sh)"
check "demo.sh field() reads past escaped quotes" 'He said "hi" \ ok' \
    "$(printf '%s\n' '{"id":"x","content":"He said \"hi\" \\ ok","n":1}' | field content)"

[ -x "$MCAI" ] || { echo "FAIL - no mcai binary at $MCAI (run make)"; exit 1; }
[ -f "$MODEL" ] || { echo "FAIL - no model at $MODEL (set MCAI_SHARED or MODEL)"; exit 1; }

# ---- Start-up ------------------------------------------------------------------------

"$MCAI" serve --help > "$DIR/help" 2>&1
check "serve --help exits 0" 0 $?
contains "--help documents the key files" "$DIR/help" "--master-key-file"
contains "--help documents the config file" "$DIR/help" "--config"
contains "--help documents the adapter cache" "$DIR/help" "--adapter-cache-mb"
contains "--help documents the knowledge-base memory budget" "$DIR/help" "--kb-cache-mb"
contains "--help documents the embedding model" "$DIR/help" "--embed-model FILE"
contains "--help documents BM25-only knowledge bases" "$DIR/help" "--kb-embeddings on|off"

env -u MCAI_MASTER_KEY MCAI_ADMIN_KEY="$(hex 20)" \
    "$MCAI" serve -m "$MODEL" --data "$DIR/d0" --port 0 > /dev/null 2> "$DIR/e0"
check "no master key: exit 2" 2 $?
contains "no master key: clear message" "$DIR/e0" "no master key"

hex 32 > "$DIR/master"
chmod 600 "$DIR/master"
MCAI_ADMIN_KEY=short "$MCAI" serve -m "$MODEL" --data "$DIR/d1" --port 0 \
    --master-key-file "$DIR/master" > /dev/null 2> "$DIR/e1"
check "weak admin key: exit 2" 2 $?
contains "weak admin key: clear message" "$DIR/e1" "admin key is weak"

printf '%s' "0000000000000000000000000000000000000000000000000000000000000000" > "$DIR/zero"
chmod 600 "$DIR/zero"
MCAI_ADMIN_KEY=$(hex 20) "$MCAI" serve -m "$MODEL" --data "$DIR/d2" --port 0 \
    --master-key-file "$DIR/zero" > /dev/null 2> "$DIR/e2"
check "weak master key: exit 2" 2 $?

# The config file names an admin key file and a bad port; the environment's admin key and
# the --port flag must win over them.
ADMIN=$(hex 24)
CFG_ADMIN=$(hex 24)
printf '%s\n' "$CFG_ADMIN" > "$DIR/admin-from-config"
cat > "$DIR/serve.conf" <<EOF
# mcai serve settings for the integration test
port = 1
ctx = $CTX
master_key_file = $DIR/master
admin-key-file = $DIR/admin-from-config
max_body_bytes = 1048576
drain_timeout_ms = 1
kv_budget_mb = 64
adapter_cache_mb = 16
max-queue = 256
EOF
MCAI_ADMIN_KEY=$ADMIN "$MCAI" serve -m "$MODEL" --data "$DIR/data" --port 0 \
    --config "$DIR/serve.conf" > "$DIR/out" 2> "$DIR/log" &
PID=$!

PORT=""
i=0
while [ $i -lt 600 ] && [ -z "$PORT" ]; do
    PORT=$(sed -n 's/^mcai serve: listening on http:\/\/[0-9.]*:\([0-9]*\)$/\1/p' \
        "$DIR/out" 2> /dev/null)
    [ -z "$PORT" ] && sleep 0.1
    i=$((i + 1))
done
if [ -z "$PORT" ]; then
    echo "FAIL - server did not start:"
    cat "$DIR/log"
    exit 1
fi
BASE="http://127.0.0.1:$PORT"
i=0
while [ $i -lt 600 ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz")" = 200 ] && break
    sleep 0.1
    i=$((i + 1))
done
ok "server listening on port $PORT (--port flag beat the config file)"

# ---- curl checks ---------------------------------------------------------------------

C="curl -s --max-time 30"
check "readyz once loaded" '{"status":"ready","model":"stories260K"}' \
    "$($C "$BASE/readyz")"
check "env admin key beats the config file's" 200 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN" "$BASE/admin/tenants")"
check "config file's admin key is refused" 401 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CFG_ADMIN" \
        "$BASE/admin/tenants")"

$C -X POST -H "Authorization: Bearer $ADMIN" -d '{"name":"omega"}' "$BASE/admin/tenants" \
    > "$DIR/omega"
TID=$(sed -n 's/^{"id":"\([^"]*\)".*/\1/p' "$DIR/omega")
$C -X POST -H "Authorization: Bearer $ADMIN" "$BASE/admin/tenants/$TID/keys" > "$DIR/okey"
KEY=$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p' "$DIR/okey")
check "curl: tenant and key created" 1 "$(printf '%s' "$KEY" | grep -c '^mcai_')"

check "curl: no key is 401" 401 \
    "$($C -o "$DIR/r401" -w '%{http_code}' "$BASE/v1/models")"
contains "curl: 401 has an OpenAI error body" "$DIR/r401" '"code":"invalid_api_key"'

head -c $((10 * 1024 * 1024)) /dev/zero | tr '\0' 'a' > "$DIR/big"
check "curl: 10 MB body is 413" 413 "$($C -o "$DIR/r413" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data-binary @"$DIR/big" "$BASE/v1/chat/completions")"
contains "curl: 413 names the limit" "$DIR/r413" 'exceeds the limit of 1048576 bytes'

printf '{"messages":[{"role":"user","content":"\303\050"}]}' > "$DIR/badutf8"
check "curl: invalid UTF-8 is 400" 400 "$($C -o "$DIR/r400" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" --data-binary @"$DIR/badutf8" \
    "$BASE/v1/chat/completions")"
contains "curl: invalid UTF-8 names the byte" "$DIR/r400" 'byte 0xc3 at offset 39'

$C -N -H "Authorization: Bearer $KEY" -d '{"messages":[{"role":"user","content":"Hi"}],
    "max_tokens":4,"temperature":0,"stream":true}' "$BASE/v1/chat/completions" > "$DIR/sse"
check "curl: SSE ends with data: [DONE]" "data: [DONE]" "$(tail -n 2 "$DIR/sse" | head -n 1)"
check "curl: every SSE line is a data line or blank" 0 \
    "$(grep -cv '^data: \|^$' "$DIR/sse")"

# A LoRA adapter by curl: uploaded as multipart/form-data, then used as the model.
LORA_TEXT=$("$MCAI" generate -m "$MODEL" -p "Once upon a time" -n 24 --temp 0 -t 1 \
    --lora "$LORA" 2> "$DIR/gen.err")
check "mcai generate --lora runs" 0 $?
LORA_TEXT_HALF=$("$MCAI" generate -m "$MODEL" -p "Once upon a time" -n 24 --temp 0 -t 1 \
    --lora "$LORA_PEFT:0.5" 2>> "$DIR/gen.err")
check "curl: adapter upload is 201" 201 "$($C -o "$DIR/up" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F name=tales -F file=@"$LORA" "$BASE/v1/adapters")"
contains "curl: the upload answers with the adapter's version" "$DIR/up" '"version":1'
$C -H "Authorization: Bearer $KEY" -d '{"model":"tales","prompt":"Once upon a time",
    "max_tokens":24,"temperature":0}' "$BASE/v1/completions" > "$DIR/lora-out"
check "curl: model=<adapter> answers like mcai generate --lora" "$LORA_TEXT" \
    "$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1],
        "utf8")).choices[0].text)' "$DIR/lora-out" 2> /dev/null)"
# A lora_scale that is 0 as a float (1e-320 is below float's smallest) is the base model,
# like lora_scale 0, not the adapter at its default scale.
BASE_TEXT=$("$MCAI" generate -m "$MODEL" -p "Once upon a time" -n 24 --temp 0 -t 1 2>> "$DIR/gen.err")
$C -H "Authorization: Bearer $KEY" -d '{"model":"tales","prompt":"Once upon a time",
    "max_tokens":24,"temperature":0,"lora_scale":1e-320}' "$BASE/v1/completions" > "$DIR/lora-tiny"
check "curl: lora_scale 1e-320 answers like the base model" "$BASE_TEXT" \
    "$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1],
        "utf8")).choices[0].text)' "$DIR/lora-tiny" 2> /dev/null)"
check "... which differs from the adapter's answer" no \
    "$([ "$BASE_TEXT" = "$LORA_TEXT" ] && echo yes || echo no)"
# Uploads may pass --max-body-bytes (1 MiB here) up to --max-adapter-bytes, with a valid
# key only: 1.5 MB of junk is read and refused as no adapter, or 413 without a key.
head -c 1500000 /dev/zero > "$DIR/junk.gguf"
check "curl: a 1.5 MB upload with a key passes the body limit (then 400)" 400 \
    "$($C -o "$DIR/rjunk" -w '%{http_code}' -H "Authorization: Bearer $KEY" -F name=junk \
        -F file=@"$DIR/junk.gguf" "$BASE/v1/adapters")"
contains "curl: ... as an invalid adapter" "$DIR/rjunk" '"code":"invalid_adapter"'
check "curl: the same upload without a valid key is 413" 413 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer mcai_nope" -F name=junk \
        -F file=@"$DIR/junk.gguf" "$BASE/v1/adapters")"

# A form field sent twice is refused, not glued to the first (name "t11t12", two files as
# one); a tenant listed twice in a publish gets one copy.
check "curl: a repeated 'name' field is 400" 400 "$($C -o "$DIR/rrep" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F name=t11 -F name=t12 -F file=@"$LORA" \
    "$BASE/v1/adapters")"
contains "curl: ... invalid_upload naming the field" "$DIR/rrep" '"param":"name","code":"invalid_upload"'
check "curl: a repeated 'file' field is 400" 400 "$($C -o "$DIR/rrep" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F name=t11 -F file=@"$LORA" -F file=@"$LORA" \
    "$BASE/v1/adapters")"
contains "curl: ... naming 'file'" "$DIR/rrep" '"param":"file","code":"invalid_upload"'
check "curl: publish with a repeated 'tenants' field is 400" 400 \
    "$($C -o "$DIR/rrep" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" -F name=dup \
        -F tenants="$TID" -F tenants="$TID" -F file=@"$LORA" "$BASE/admin/adapters")"
contains "curl: ... naming 'tenants'" "$DIR/rrep" '"param":"tenants","code":"invalid_upload"'
check "curl: publish to one tenant listed twice is 201" 201 \
    "$($C -o "$DIR/rrep" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" -F name=dup \
        -F tenants="$TID,$TID" -F file=@"$LORA" "$BASE/admin/adapters")"
check "curl: ... with one copy for that tenant" 1 "$(grep -o '"tenant":' "$DIR/rrep" | wc -l)"
$C -o /dev/null -X DELETE -H "Authorization: Bearer $KEY" "$BASE/v1/adapters/dup"

# A PEFT upload whose config is not JSON blames adapter_config, not adapter_model.
check "curl: a bad adapter_config is 400" 400 "$($C -o "$DIR/rcfg" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F name=t9 -F adapter_config=@"$LORA" \
    -F adapter_model=@"$LORA_PEFT/adapter_model.safetensors" "$BASE/v1/adapters")"
contains "curl: ... with param adapter_config" "$DIR/rcfg" '"param":"adapter_config"'
check "curl: an upload without a name is 400" 400 "$($C -o "$DIR/rnon" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F file=@"$LORA" "$BASE/v1/adapters")"
contains "curl: ... code missing_field" "$DIR/rnon" '"code":"missing_field"'
contains "curl: ... param name" "$DIR/rnon" '"param":"name"'
# Every answer with code invalid_adapter counts as a rejection with that reason.
rejected_adapters() {
    $C "$BASE/metrics" |
        awk '/^mcai_rejections_total\{.*reason="invalid_adapter"/ { s += $2 } END { print s + 0 }'
}
REJ0=$(rejected_adapters)
check "curl: an empty adapter_config part is 400" 400 "$($C -o "$DIR/rcfg0" -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" -F name=t9 -F adapter_config=@/dev/null \
    -F adapter_model=@"$LORA_PEFT/adapter_model.safetensors" "$BASE/v1/adapters")"
contains "curl: ... with param adapter_config" "$DIR/rcfg0" '"param":"adapter_config"'
check "curl: ... and counts as an invalid_adapter rejection" $((REJ0 + 1)) "$(rejected_adapters)"

# libmicrohttpd decodes the path before we see it: a %00 must not cut an id short and
# reach another object (t10%00junk is not t10, story%00xyz is not the model list).
$C -o /dev/null -H "Authorization: Bearer $KEY" -F name=t10 -F file=@"$LORA" "$BASE/v1/adapters"
check "curl: DELETE /v1/adapters/t10%00junk is 404" 404 "$($C -o "$DIR/rnul" -w '%{http_code}' \
    -X DELETE -H "Authorization: Bearer $KEY" "$BASE/v1/adapters/t10%00junk")"
contains "curl: ... naming the NUL" "$DIR/rnul" 'NUL byte (%00)'
check "curl: ... and t10 is still there" 200 "$($C -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" "$BASE/v1/adapters/t10")"
$C -o /dev/null -X DELETE -H "Authorization: Bearer $KEY" "$BASE/v1/adapters/t10"
check "curl: GET /v1/models/stories260K%00xyz is 404" 404 "$($C -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" "$BASE/v1/models/stories260K%00xyz")"
check "curl: GET /v1/models/%00 is 404" 404 "$($C -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $KEY" "$BASE/v1/models/%00")"
check "curl: GET /admin/tenants/<id>%00zz is 404" 404 "$($C -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $ADMIN" "$BASE/admin/tenants/$TID%00zz")"
check "curl: a NUL in a query value still reaches the handler (400)" 400 \
    "$($C -o /dev/null -w '%{http_code}' -X PUT -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: text/plain' --data-binary x "$BASE/v1/kb/documents?id=x%00y")"

# The same objects from the command line, on the running server's data directory.
MK="--data $DIR/data --tenant omega --master-key-file $DIR/master"
"$MCAI" adapter add cli-peft -m "$MODEL" --peft "$LORA_PEFT" $MK > "$DIR/cli-add" 2>&1
check "mcai adapter add (PEFT) beside the running server" 0 $?
"$MCAI" adapter list $MK > "$DIR/cli-list" 2>&1
contains "mcai adapter list shows the adapter uploaded over HTTP" "$DIR/cli-list" "tales"
$C -H "Authorization: Bearer $KEY" -d '{"model":"cli-peft","prompt":"Once upon a time",
    "max_tokens":24,"temperature":0}' "$BASE/v1/completions" > "$DIR/lora-cli"
check "curl: the adapter added by the CLI answers like mcai generate --lora" "$LORA_TEXT" \
    "$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1],
        "utf8")).choices[0].text)' "$DIR/lora-cli" 2> /dev/null)"
head -c 5000 "$LORA" > "$DIR/cut.gguf"
"$MCAI" adapter add cut -m "$MODEL" --file "$DIR/cut.gguf" $MK > /dev/null 2> "$DIR/cli-bad"
check "mcai adapter add of a truncated file exits 1" 1 $?
contains "mcai adapter add names the tensor" "$DIR/cli-bad" "lora_"
"$MCAI" adapter delete cli-peft $MK > /dev/null 2>&1
check "mcai adapter delete" 0 $?
check "curl: the adapter deleted by the CLI is gone for the server" 404 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" \
        -d '{"model":"cli-peft","prompt":"x"}' "$BASE/v1/completions")"

# The adapter's GGUF metadata keys are plain text in the file, never under the data dir.
check "sealed at rest: the adapter file's text is not in the data dir" "" \
    "$(grep -rlF -- "adapter.lora.alpha" "$DIR/data" 2>/dev/null)"

$C "$BASE/metrics" > "$DIR/metrics"
contains "curl: metrics in Prometheus text" "$DIR/metrics" "# TYPE mcai_requests_total counter"
contains "config file: adapter_cache_mb sets the cache budget" "$DIR/metrics" \
    "mcai_adapter_cache_budget_bytes 16777216"


# ---- The openai client ---------------------------------------------------------------

if [ -f tests/integration/node_modules/openai/package.json ] && command -v node > /dev/null; then
    MCAI_BASE=$BASE MCAI_ADMIN_KEY=$ADMIN MCAI_CTX=$CTX MCAI_QUICK=$MCAI_QUICK \
        MCAI_LORA_GGUF=$LORA MCAI_LORA_PEFT=$LORA_PEFT MCAI_LORA_TEXT=$LORA_TEXT \
        MCAI_LORA_TEXT_HALF=$LORA_TEXT_HALF \
        timeout 240 node tests/integration/client.mjs > "$DIR/node" 2>&1
    cat "$DIR/node"
    p=$(sed -n 's/^node checks: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$DIR/node")
    f=$(sed -n 's/^node checks: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$DIR/node")
    if [ -z "$p" ]; then
        bad "openai client checks" "client.mjs did not finish"
    else
        passed=$((passed + p))
        failed=$((failed + f))
    fi
else
    bad "openai client checks" "node or tests/integration/node_modules missing: run \
scripts/install-deps.sh (it runs npm ci in tests/integration)"
fi

if [ -f tests/integration/node_modules/openai/package.json ] && command -v node > /dev/null; then
    MCAI_BASE=$BASE MCAI_ADMIN_KEY=$ADMIN timeout 240 node tests/integration/kb.mjs \
        > "$DIR/node-kb" 2>&1
    cat "$DIR/node-kb"
    p=$(sed -n 's/^kb checks: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$DIR/node-kb")
    f=$(sed -n 's/^kb checks: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$DIR/node-kb")
    if [ -z "$p" ]; then
        bad "knowledge-base checks" "kb.mjs did not finish"
    else
        passed=$((passed + p))
        failed=$((failed + f))
    fi
fi

# Conversations, fronts and documents are sealed: their text appears nowhere under the
# data directory (client.mjs stored "there was a cat." and the front "You are Alpha v2.",
# kb.mjs the document text "Cats sleep sixteen hours").
for secret in "there was a cat." "You are Alpha v2." "Cats sleep sixteen hours"; do
    check "sealed at rest: '$secret' is not in any file under the data dir" "" \
        "$(grep -rlF -- "$secret" "$DIR/data" 2>/dev/null)"
done

# ---- mcai kb on a data directory -----------------------------------------------------

KB="$DIR/kbcli"
KBF="--data $KB/data --master-key-file $DIR/master"
mkdir -p "$KB/docs/sub"
printf 'Otters hold hands while they sleep in kelp forests.\n' > "$KB/docs/otters.txt"
printf '# Volcanoes\n\nMagma rises through the crust and erupts as lava.\n' \
    > "$KB/docs/sub/volcano.md"
printf '<html><head><title>Tea</title></head><body><p>Oolong tea is partly oxidised.</p>' \
    > "$KB/docs/tea.html"
printf '%%PDF-1.4' > "$KB/docs/skipped.pdf"
cat > "$KB/corpus.jsonl" <<'EOF'
{"_id": "j1", "title": "Bees", "text": "Honey bees dance to tell where the flowers are."}
{"_id": "j 2", "text": "Penguins huddle together against the antarctic wind."}
EOF
cat > "$KB/queries.jsonl" <<'EOF'
{"_id": "q1", "text": "where do otters sleep"}
{"_id": "q2", "text": "bees dance to show flowers"}
{"_id": "q3", "text": "penguins huddle in the wind"}
EOF
# $KBF is split into words on purpose.
"$MCAI" tenant create $KBF --name clitenant > /dev/null 2> "$KB/err"
check "cli: tenant create" 0 $?
"$MCAI" kb ingest $KBF --tenant clitenant "$KB/docs" --jsonl "$KB/corpus.jsonl" \
    > /dev/null 2> "$KB/ingest"
check "cli: kb ingest of a directory and jsonl exits 0" 0 $?
contains "cli: kb ingest counts documents" "$KB/ingest" "ingested 5 documents (0 replaced)"
contains "cli: kb ingest skips unknown types" "$KB/ingest" "1 files skipped"
"$MCAI" kb search $KBF --tenant clitenant -k 2 "where do otters sleep" > "$KB/s1"
check "cli: kb search ranks the right document first" "otters.txt" \
    "$(head -n 1 "$KB/s1" | cut -f 3)"
check "cli: kb search prints k lines" 2 "$(wc -l < "$KB/s1" | tr -d ' ')"
"$MCAI" kb list $KBF --tenant clitenant > "$KB/list" 2> /dev/null
check "cli: kb list shows every id, escaped" 'j1 j\x202 otters.txt sub/volcano.md tea.html' \
    "$(cut -f 1 "$KB/list" | sort | tr '\n' ' ' | sed 's/ $//')"
"$MCAI" kb search $KBF --tenant clitenant -k 3 --tag run1 --queries "$KB/queries.jsonl" \
    > "$KB/trec"
check "cli: --queries exits 0" 0 $?
check "cli: every TREC line is 'qid Q0 docid rank score tag'" 0 \
    "$(grep -cvE '^q[123] Q0 [^ ]+ [123] [0-9]+\.[0-9]+ run1$' "$KB/trec")"
check "cli: TREC run ranks each query's document first" 'q1:otters.txt q2:j1 q3:j\x202' \
    "$(awk '$4 == 1 { printf "%s%s:%s", sep, $1, $3; sep = " " }' "$KB/trec")"
printf '{"_id": "q1", "text": "otters"}\n{"_id": "q1", "text": "bees"}\n' > "$KB/q-dup.jsonl"
"$MCAI" kb search $KBF --tenant clitenant --queries "$KB/q-dup.jsonl" > /dev/null 2> "$KB/e-dup"
check "cli: a repeated query id exits 1" 1 $?
contains "cli: and names both lines" "$KB/e-dup" 'q-dup.jsonl:2: query id "q1" repeats line 1'
printf '{"_id": "", "text": "otters"}\n' > "$KB/q-empty.jsonl"
"$MCAI" kb search $KBF --tenant clitenant --queries "$KB/q-empty.jsonl" > "$KB/o-empty" 2> /dev/null
check "cli: an empty query id exits 1 and prints no TREC line" "1 0" \
    "$? $(wc -l < "$KB/o-empty" | tr -d ' ')"
"$MCAI" kb list --data "$KB/no-such-dir" --master-key-file "$DIR/master" --tenant x \
    > /dev/null 2> "$KB/e-nodir"
check "cli: kb on a missing data directory exits 1" 1 $?
check "cli: and creates nothing" no "$([ -e "$KB/no-such-dir" ] && echo yes || echo no)"
"$MCAI" kb search $KBF --tenant clitenant " " > /dev/null 2> /dev/null
check "cli: an empty query exits 2" 2 $?
"$MCAI" kb search $KBF --tenant clitenant -k 2000 x > /dev/null 2> "$KB/e-k"
check "cli: -k out of range exits 2" 2 $?
contains "cli: a number error names the option and the range" "$KB/e-k" \
    "-k must be an integer from 1 to 1000, got '2000'"
"$MCAI" kb ingest $KBF --tenant clitenant --chunk-tokens abc x > /dev/null 2> "$KB/e-c"
contains "cli: --chunk-tokens error names the option" "$KB/e-c" \
    "--chunk-tokens must be an integer from 1 to 1000000, got 'abc'"
if command -v script > /dev/null; then
    script -qec "$MCAI kb ingest $KBF --tenant clitenant --upsert $KB/docs" "$KB/tty" \
        > /dev/null 2>&1
    check "cli: a directory ingest on a terminal draws the bar to 100%" 1 \
        "$(tr '\r' '\n' < "$KB/tty" | grep -c '\] 100% ')"
fi
# With the model: vectors, and a dense document search returns k documents.
"$MCAI" tenant create $KBF --name clidense > /dev/null 2>&1
"$MCAI" kb ingest $KBF --tenant clidense -m "$MODEL" --threads 2 "$KB/docs" \
    --jsonl "$KB/corpus.jsonl" > /dev/null 2> "$KB/ingest-m"
contains "cli: kb ingest -m makes vectors" "$KB/ingest-m" "with vectors"
check "cli: dense search returns k documents when k exist" 5 \
    "$("$MCAI" kb search $KBF --tenant clidense -m "$MODEL" --mode dense -k 5 zzz | wc -l |
        tr -d ' ')"

# ---- SIGTERM during a stream ---------------------------------------------------------

$C -N -H "Authorization: Bearer $KEY" -d '{"messages":[{"role":"user","content":"Go"}],
    "max_tokens":480,"temperature":1,"seed":5,"stream":true}' "$BASE/v1/chat/completions" \
    > "$DIR/term" 2>&1 &
CURL=$!
i=0
while [ $i -lt 300 ] && ! grep -q '^data: {' "$DIR/term" 2> /dev/null; do
    sleep 0.02
    i=$((i + 1))
done
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=""
wait "$CURL"
check "SIGTERM: server exits 0" 0 "$rc"
check "SIGTERM: the running stream gets exactly one error event" 1 \
    "$(grep -c '^data: {"error":' "$DIR/term")"
check "SIGTERM: and no [DONE] after it" 0 "$(grep -c '^data: \[DONE\]' "$DIR/term")"
contains "SIGTERM: shutdown logged" "$DIR/log" "shutdown_done"
check "SIGTERM: nothing listens any more" 000 \
    "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/healthz")"
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$DIR/log"; then
    bad "sanitizers" "$(grep -m 3 "AddressSanitizer\|runtime error:" "$DIR/log")"
fi

# ---- The log ---------------------------------------------------------------------------
# One line per event: time, level, module, event, key=value fields; every request ends
# with request_done carrying its id, tenant and status.
TS='[0-9]\{4\}-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]\.[0-9]\{3\}Z'
RD1="^$TS INFO http request_done id=req_[0-9a-f]\{16\} tenant=t_[0-9a-f]\{16\} method=POST"
RD1="$RD1 route=/v1/chat/completions status="
RD2=" ms=[0-9.]* bytes_in=[0-9]* tok_in=[0-9]* tok_out=[0-9]*\$"
for st in 200 429 400; do
    check "log: a request_done line with id, tenant and status $st" yes \
        "$(grep -q "$RD1$st$RD2" "$DIR/log" && echo yes)"
done
check "log: every line starts with a time and a level" 0 \
    "$(grep -v "^$TS \(ERROR\|WARN\|INFO\|DEBUG\) [a-z_]* [a-z_]*\( \|\$\)" "$DIR/log" |
        grep -cv '^mcai serve:')"
# A finished stream's request_done counts the tokens its stream_done counts. (One whose
# client left logs request_done when the connection ends, with what was sent by then.)
n_streams=0
n_same=0
SD='s/.* stream_done tenant=t_[0-9a-f]* id=[a-z]*-\([0-9a-f]*\) tok_in=[0-9]*'
SD="$SD"' tok_out=\([0-9]*\) failed=0$/\1:\2/p'
for pair in $(sed -n "$SD" "$DIR/log"); do
    n_streams=$((n_streams + 1))
    grep -q "request_done id=req_${pair%%:*} .* tok_out=${pair##*:}\$" "$DIR/log" &&
        n_same=$((n_same + 1))
done
check "log: a stream's request_done has its stream_done's tok_out ($n_streams streams)" \
    "$n_streams" "$n_same"

# ---- A second server: model loading, disconnects, queue_full, draining -----------------
# --ctx 2048 --max-queue 16: long generations, and two requests of n = 16 (one running,
# one queued) fill a tenant's queue. For the first start the model is a FIFO, so loading
# blocks in open() until the test writes to it: /readyz is observed while the model
# loads, then the load fails and the server exits 1.

# start2 MODEL NAME: starts a server in the background; sets PID2, PORT2 and BASE2.
start2() {
    MCAI_ADMIN_KEY=$ADMIN "$MCAI" serve -m "$1" --data "$DIR/$2" --port 0 \
        --master-key-file "$DIR/master" --ctx 2048 --max-queue 16 \
        --drain-timeout-ms 60000 > "$DIR/$2.out" 2> "$DIR/$2.log" &
    PID2=$!
    PORT2=""
    i=0
    while [ $i -lt 300 ] && [ -z "$PORT2" ]; do
        PORT2=$(sed -n 's/^mcai serve: listening on http:\/\/[0-9.]*:\([0-9]*\)$/\1/p' \
            "$DIR/$2.out" 2> /dev/null)
        [ -z "$PORT2" ] && sleep 0.05
        i=$((i + 1))
    done
    BASE2="http://127.0.0.1:$PORT2"
}

mkfifo "$DIR/slow.gguf"
start2 "$DIR/slow.gguf" data-load
check "loading: /readyz is 503 loading while the model loads" '503 {"status":"loading"}' \
    "$($C -w ' %{http_code}' "$BASE2/readyz" | awk '{print $2, $1}')"
check "loading: /healthz answers meanwhile" 200 \
    "$($C -o /dev/null -w '%{http_code}' "$BASE2/healthz")"
: > "$DIR/slow.gguf"
wait "$PID2"
check "loading: a model that cannot load exits 1" 1 $?
PID2=""

start2 "$MODEL" data2
i=0
while [ $i -lt 300 ] && [ "$($C -o /dev/null -w '%{http_code}' "$BASE2/readyz")" != 200 ]; do
    sleep 0.05
    i=$((i + 1))
done
T2=$($C -X POST -H "Authorization: Bearer $ADMIN" -d '{"name":"q"}' "$BASE2/admin/tenants" |
    sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
K2=$($C -X POST -H "Authorization: Bearer $ADMIN" "$BASE2/admin/tenants/$T2/keys" |
    sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
# metric2 NAME: the value of an unlabelled metric of the second server.
metric2() { $C "$BASE2/metrics" | sed -n "s/^$1 \\([0-9]*\\)\$/\\1/p"; }
# wait_metric2 NAME VALUE [SECONDS]: waits (5 s unless told) for the metric to be VALUE.
wait_metric2() {
    j=0
    while [ $j -lt $((${3:-5} * 20)) ] && [ "$(metric2 "$1")" != "$2" ]; do
        sleep 0.05
        j=$((j + 1))
    done
}
# usage2: the tenant's completion tokens recorded so far (GET /v1/usage).
usage2() {
    $C -H "Authorization: Bearer $K2" "$BASE2/v1/usage" |
        sed -n 's/.*"total":{[^}]*"completion_tokens":\([0-9]*\)}.*/\1/p'
}
# chat2 JSON-FIELDS: a chat request body with those fields after the messages.
chat2() { printf '{"messages":[{"role":"user","content":"Go"}],%s}' "$1"; }

# A non-streaming client that gives up cancels its sequences, even while they keep
# producing tokens: 16 choices of 2,000 tokens take many seconds; the client leaves
# after 0.3 s.
$C -o /dev/null --max-time 0.3 -H "Authorization: Bearer $K2" \
    -d "$(chat2 '"max_tokens":2000,"n":16,"temperature":1,"seed":5')" "$BASE2/v1/chat/completions"
wait_metric2 mcai_active_sequences 0 1
check "disconnect: a non-streaming client that leaves frees its sequences within 1 s" \
    "0 0" "$(metric2 mcai_active_sequences) $(metric2 mcai_queue_depth)"
# The usage is written just after the last sequence stops: give it a moment.
i=0
while [ $i -lt 20 ] && [ -z "$(usage2)" ]; do
    sleep 0.05
    i=$((i + 1))
done
charged=$(usage2)
if [ "${charged:-99999}" -lt 8000 ]; then
    ok "disconnect: the client that left is charged $charged of 32000 tokens"
else
    bad "disconnect: the client that left is charged for what it never read" "$charged tokens"
fi

# queue_full: 16 running and 16 queued fill --max-queue 16; the next request is refused.
$C --max-time 120 -o "$DIR/q1" -H "Authorization: Bearer $K2" \
    -d "$(chat2 '"max_tokens":2000,"n":16,"temperature":1,"seed":5')" \
    "$BASE2/v1/chat/completions" &
Q1=$!
wait_metric2 mcai_active_sequences 16
$C --max-time 120 -o "$DIR/q2" -H "Authorization: Bearer $K2" \
    -d "$(chat2 '"max_tokens":2,"n":16')" "$BASE2/v1/chat/completions" &
Q2=$!
wait_metric2 mcai_queue_depth 16
check "queue_full: a full queue is 429" 429 \
    "$($C -D "$DIR/q3.h" -o "$DIR/q3" -w '%{http_code}' -H "Authorization: Bearer $K2" \
        -d "$(chat2 '"max_tokens":2')" "$BASE2/v1/chat/completions")"
contains "queue_full: an OpenAI error body" "$DIR/q3" '"code":"queue_full"'
contains "queue_full: with Retry-After" "$DIR/q3.h" "Retry-After: 1"
kill "$Q1" 2> /dev/null
wait "$Q1" "$Q2"
wait_metric2 mcai_active_sequences 0

# A generation that runs for a few seconds, then SIGTERM while it runs.
LONG2=2000
[ "$MCAI_QUICK" = 1 ] && LONG2=600
$C --max-time 120 -o "$DIR/q1" -H "Authorization: Bearer $K2" \
    -d "$(chat2 '"max_tokens":'$LONG2',"n":4,"temperature":1,"seed":5')" \
    "$BASE2/v1/chat/completions" &
Q1=$!
wait_metric2 mcai_active_sequences 4
# SIGTERM while a generation runs: the listener stays open during the drain and answers.
kill -TERM "$PID2"
i=0
while [ $i -lt 100 ] && [ "$($C -o /dev/null -w '%{http_code}' "$BASE2/readyz")" = 200 ]; do
    sleep 0.02
    i=$((i + 1))
done
check "draining: /readyz is 503 draining" '503 {"status":"draining"}' \
    "$($C -w ' %{http_code}' "$BASE2/readyz" | awk '{print $2, $1}')"
check "draining: a new request is 503 shutting_down, not a refused connection" 503 \
    "$($C -D "$DIR/q4.h" -o "$DIR/q4" -w '%{http_code}' -H "Authorization: Bearer $K2" \
        "$BASE2/v1/models")"
contains "draining: 503 has an OpenAI error body" "$DIR/q4" '"code":"shutting_down"'
contains "draining: 503 has Retry-After" "$DIR/q4.h" "Retry-After:"
wait "$Q1"
contains "draining: the running generation finishes" "$DIR/q1" '"finish_reason":"length"'
wait "$PID2"
check "draining: the server exits 0" 0 $?
PID2=""
check "draining: then nothing listens" 000 \
    "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE2/healthz")"
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$DIR/data-load.log" "$DIR/data2.log"; then
    bad "sanitizers (second server)" \
        "$(grep -h -m 3 "AddressSanitizer\|runtime error:" "$DIR/data-load.log" "$DIR/data2.log")"
fi

# ---- A third and fourth server: --embed-model, --kb-embeddings off ------------------
# stories260K serves, llama-2-tiny-random (another width than stories260K's 64) embeds:
# /v1/embeddings and the knowledge base's vectors come from it. Then a server whose
# knowledge bases are BM25 only.

EMBED_MODEL=$SHARED/models/llama-2-tiny-random.gguf
# launch3 NAME FLAGS...: starts a server on $DIR/NAME, waits for /readyz; sets PID2 and
# BASE2. start3 does the same and also sets K3, the key of a new tenant.
launch3() {
    name=$1
    shift
    MCAI_ADMIN_KEY=$ADMIN "$MCAI" serve -m "$MODEL" --data "$DIR/$name" --port 0 \
        --master-key-file "$DIR/master" "$@" > "$DIR/$name.out" 2> "$DIR/$name.log" &
    PID2=$!
    PORT2=""
    i=0
    while [ $i -lt 300 ] && [ -z "$PORT2" ]; do
        PORT2=$(sed -n 's/^mcai serve: listening on http:\/\/[0-9.]*:\([0-9]*\)$/\1/p' \
            "$DIR/$name.out" 2> /dev/null)
        [ -z "$PORT2" ] && sleep 0.05
        i=$((i + 1))
    done
    BASE2="http://127.0.0.1:$PORT2"
    i=0
    while [ $i -lt 300 ] && [ "$($C -o /dev/null -w '%{http_code}' "$BASE2/readyz")" != 200 ]; do
        sleep 0.05
        i=$((i + 1))
    done
}
start3() {
    launch3 "$@"
    T3=$($C -X POST -H "Authorization: Bearer $ADMIN" -d '{"name":"e"}' "$BASE2/admin/tenants" |
        sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
    K3=$($C -X POST -H "Authorization: Bearer $ADMIN" "$BASE2/admin/tenants/$T3/keys" |
        sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
}
# post3 PATH BODY OUT: POSTs as tenant K3, body to OUT; prints the status.
post3() {
    $C -o "$3" -w '%{http_code}' -H "Authorization: Bearer $K3" -d "$2" "$BASE2$1"
}
# jq3 FILE EXPR: evaluates a JavaScript expression over the JSON in FILE (as j).
jq3() {
    node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        process.stdout.write(String(eval(process.argv[2])))' "$1" "$2" 2> /dev/null
}
KB_DOCS='[{"id":"dogs","text":"Dogs bark at the mailman every morning."},
    {"id":"cats","text":"Cats sleep in the warm sun all afternoon."}]'

# The embedding model comes from the config file's embed_model key.
echo "embed_model = $EMBED_MODEL" > "$DIR/embed.conf"
start3 data3 --config "$DIR/embed.conf"
check "embed-model: embeddings are 200" 200 \
    "$(post3 /v1/embeddings '{"input":["a cat","a dog"]}' "$DIR/e3")"
check "embed-model: the answer names the embedding model" llama-2-tiny-random \
    "$(jq3 "$DIR/e3" j.model)"
DIM3=$(jq3 "$DIR/e3" 'j.data[0].embedding.length')
if [ "${DIM3:-0}" -gt 0 ] && [ "$DIM3" != 64 ]; then
    ok "embed-model: vectors have the embedding model's width ($DIM3, not stories260K's 64)"
else
    bad "embed-model: vectors have the embedding model's width" "got '$DIM3'"
fi
check "embed-model: 'dimensions' of its width is 200" 200 \
    "$(post3 /v1/embeddings '{"input":"a cat","dimensions":'"${DIM3:-0}"'}' "$DIR/e3b")"
check "embed-model: 'dimensions' 64 (the base model's) is 400" 400 \
    "$(post3 /v1/embeddings '{"input":"a cat","dimensions":64}' "$DIR/e3b")"
check "embed-model: by its name" 200 \
    "$(post3 /v1/embeddings '{"input":"a cat","model":"llama-2-tiny-random"}' "$DIR/e3b")"
check "embed-model: the base model's name is accepted" "200 llama-2-tiny-random $DIM3" \
    "$(post3 /v1/embeddings '{"input":"a cat","model":"stories260K"}' "$DIR/e3b") \
$(jq3 "$DIR/e3b" 'j.model + " " + j.data[0].embedding.length')"
check "embed-model: another name is 404" 404 \
    "$(post3 /v1/embeddings '{"input":"a cat","model":"nope"}' "$DIR/e3b")"
contains "embed-model: 404 model_not_found" "$DIR/e3b" '"code":"model_not_found"'
$C -H "Authorization: Bearer $K3" "$BASE2/v1/models" > "$DIR/m3"
check "embed-model: /v1/models lists both, the embedding model marked" \
    "stories260K llama-2-tiny-random:embeddings" \
    "$(jq3 "$DIR/m3" 'j.data.map(m => m.id + (m.mcai_purpose ? ":" + m.mcai_purpose : ""))
        .join(" ")')"
check "embed-model: GET /v1/models/llama-2-tiny-random" 200 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $K3" \
        "$BASE2/v1/models/llama-2-tiny-random")"
check "embed-model: an adapter of its name is 409" 409 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $K3" \
        -F name=llama-2-tiny-random -F file=@"$LORA" "$BASE2/v1/adapters")"
check "embed-model: chat still runs on the base model" "200 stories260K" \
    "$(post3 /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}' \
        "$DIR/c3") $(jq3 "$DIR/c3" j.model)"
check "embed-model: chat naming the embedding model is 404" 404 \
    "$(post3 /v1/chat/completions '{"model":"llama-2-tiny-random","max_tokens":2,
        "messages":[{"role":"user","content":"Hi"}]}' "$DIR/c3b")"
check "embed-model: knowledge-base ingest" 200 "$(post3 /v1/kb/documents "$KB_DOCS" "$DIR/i3")"
check "embed-model: dense search finds a document" "200 dense 2" \
    "$(post3 /v1/kb/search '{"query":"dogs bark","mode":"dense"}' "$DIR/s3") \
$(jq3 "$DIR/s3" 'j.mode + " " + j.data.length')"
contains "embed-model: the knowledge bases embed with it" "$DIR/data3.log" "dim=$DIM3"
# A front that allows only the base model does not reach the embedding model.
T4=$($C -X POST -H "Authorization: Bearer $ADMIN" \
    -d '{"name":"f","front":{"allowed_models":["stories260K"]}}' "$BASE2/admin/tenants" |
    sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
K4=$($C -X POST -H "Authorization: Bearer $ADMIN" "$BASE2/admin/tenants/$T4/keys" |
    sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
check "embed-model: a front without it gets 404 for embeddings" 404 \
    "$($C -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $K4" \
        -d '{"input":"a cat"}' "$BASE2/v1/embeddings")"
kill -TERM "$PID2"
wait "$PID2"
check "embed-model: the server exits 0" 0 $?
PID2=""

# The same data without embeddings: the knowledge base that holds vectors still answers
# BM25, and refuses an ingest that would leave chunks without vectors.
K3E=$K3
start3 data3 --kb-embeddings off
K3=$K3E
check "kb-embeddings off: a knowledge base with vectors answers bm25" "200 2" \
    "$(post3 /v1/kb/search '{"query":"dogs bark cats"}' "$DIR/s3c") $(jq3 "$DIR/s3c" j.data.length)"
check "kb-embeddings off: and refuses an ingest without vectors" 400 \
    "$(post3 /v1/kb/documents '[{"id":"birds","text":"Birds sing."}]' "$DIR/i3c")"
kill -TERM "$PID2"
wait "$PID2"
PID2=""

start3 data4 --kb-embeddings off --adapter-format q8_0
check "kb-embeddings off: ingest" 200 "$(post3 /v1/kb/documents "$KB_DOCS" "$DIR/i4")"
check "kb-embeddings off: bm25 search finds the document" "200 bm25 dogs" \
    "$(post3 /v1/kb/search '{"query":"mailman"}' "$DIR/s4") \
$(jq3 "$DIR/s4" 'j.mode + " " + j.data[0].document_id')"
check "kb-embeddings off: dense search is 400" 400 \
    "$(post3 /v1/kb/search '{"query":"mailman","mode":"dense"}' "$DIR/s4b")"
contains "kb-embeddings off: it says why" "$DIR/s4b" '"code":"embeddings_off"'
check "kb-embeddings off: hybrid search is 400" 400 \
    "$(post3 /v1/kb/search '{"query":"mailman","mode":"hybrid"}' "$DIR/s4b")"
check "kb-embeddings off: grounded chat falls back to bm25" "200 dogs" \
    "$(post3 /v1/chat/completions '{"messages":[{"role":"user","content":"mailman"}],
        "max_tokens":2,"retrieval":{"mode":"hybrid","k":1}}' "$DIR/c4") \
$(jq3 "$DIR/c4" 'j.mcai_citations[0].document_id')"
check "kb-embeddings off: /v1/embeddings still runs on the base model" "200 stories260K 64" \
    "$(post3 /v1/embeddings '{"input":"a cat"}' "$DIR/e4") \
$(jq3 "$DIR/e4" 'j.model + " " + j.data[0].embedding.length')"
# The same server keeps resident adapters as Q8_0: the F32 reference adapter (17,920
# bytes of weights) is held in about a quarter of that, and still answers.
check "adapter-format q8_0: upload" 201 "$($C -o "$DIR/u4" -w '%{http_code}' \
    -H "Authorization: Bearer $K3" -F name=story -F file=@"$SHARED/models/stories260K-lora-r4.gguf" \
    "$BASE2/v1/adapters")"
check "adapter-format q8_0: completion with the adapter" "200 story 8" \
    "$(post3 /v1/completions '{"model":"story","prompt":"Once upon a time","max_tokens":8,
        "temperature":0}' "$DIR/c4q") $(jq3 "$DIR/c4q" 'j.model + " " + j.usage.completion_tokens')"
RES4=$($C "$BASE2/metrics" | sed -n 's/^mcai_adapter_cache_resident_bytes \([0-9]*\)$/\1/p')
if [ -n "$RES4" ] && [ "$RES4" -gt 0 ] && [ "$RES4" -lt 9000 ]; then
    ok "adapter-format q8_0: resident bytes $RES4 (F32 weights: 17920)"
else
    bad "adapter-format q8_0: resident bytes" "got '$RES4', want 1..8999"
fi
RB4=$($C -H "Authorization: Bearer $K3" "$BASE2/v1/adapters/story" |
    node -e 'process.stdout.write(String(JSON.parse(require("fs").readFileSync(0)).resident_bytes))')
check "adapter-format q8_0: GET /v1/adapters/story gives the Q8_0 copy's resident bytes" "$RES4" "$RB4"
contains "adapter-format q8_0: the load is logged as q8_0" "$DIR/data4.log" "format=q8_0"
contains "the engine logs an unset KV budget as none" "$DIR/data4.log" "kv_budget=none"
kill -TERM "$PID2"
wait "$PID2"
check "kb-embeddings off: the server exits 0" 0 $?
PID2=""
# An ingest is one transaction: a server killed (SIGKILL) in the middle of a large batch
# comes back with the knowledge base exactly as it was before that batch.
start3 data6
K6=$K3
check "kill -9 mid-ingest: two documents first" 200 "$(post3 /v1/kb/documents "$KB_DOCS" "$DIR/i6")"
node -e 'const docs = [];
    for (let i = 0; i < 300; i++)
        docs.push({ id: "big" + i, text: ("word" + i + " ").repeat(300) });
    process.stdout.write(JSON.stringify(docs));' > "$DIR/big.json"
$C -o /dev/null -H "Authorization: Bearer $K6" --data-binary @"$DIR/big.json" \
    "$BASE2/v1/kb/documents" 2> /dev/null &
CURL6=$!
sleep 1
kill -KILL "$PID2"
wait "$PID2" 2> /dev/null
wait "$CURL6" 2> /dev/null
CURL6_RC=$?
PID2=""
# curl ends without an answer (52: empty reply, 56: reset) only if the server died
# while it was still working on the batch, not after refusing or finishing it.
check "kill -9 mid-ingest: the batch was still running when the server died" yes \
    "$([ "$CURL6_RC" -eq 52 ] || [ "$CURL6_RC" -eq 56 ] && echo yes || echo "no ($CURL6_RC)")"
launch3 data6
check "kill -9 mid-ingest: after a restart the knowledge base holds the two documents only" \
    "200 2" "$($C -o "$DIR/l6" -w '%{http_code}' -H "Authorization: Bearer $K6" \
        "$BASE2/v1/kb/documents") $(jq3 "$DIR/l6" j.data.length)"
kill -TERM "$PID2"
wait "$PID2"
PID2=""

# A server (with embeddings) on the knowledge bases `mcai kb ingest` filled without a
# model: a search that names no mode runs bm25 there instead of failing for vectors.
KCLI=$("$MCAI" key create $KBF --tenant clitenant 2> /dev/null)
start3 kbcli/data
K3=$KCLI
check "kb without vectors: a search without mode is bm25 and finds the document" \
    "200 bm25 otters.txt" "$(post3 /v1/kb/search '{"query":"where do otters sleep"}' "$DIR/s5") \
$(jq3 "$DIR/s5" 'j.mode + " " + j.data[0].document_id')"
check "kb without vectors: hybrid, asked for, is a 400" 400 \
    "$(post3 /v1/kb/search '{"query":"otters","mode":"hybrid"}' "$DIR/s5b")"
kill -TERM "$PID2"
wait "$PID2"
PID2=""
if grep -q "ERROR: AddressSanitizer\|runtime error:" "$DIR/data3.log" "$DIR/data4.log"; then
    bad "sanitizers (embedding servers)" \
        "$(grep -h -m 3 "AddressSanitizer\|runtime error:" "$DIR/data3.log" "$DIR/data4.log")"
fi

echo "integration: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
