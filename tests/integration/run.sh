#!/bin/sh
# run.sh - integration test of `mcai serve`: starts a real server on a free port with a
# temporary data directory and drives it with curl and with the official openai npm
# client (client.mjs). Checks, in order:
#   - start-up: --help, refusal (exit 2) without a master key and with a weak admin key,
#     precedence flags > environment > config file;
#   - curl: health, readiness, metrics, 401, a 10 MB body (413), invalid UTF-8 (400),
#     raw SSE framing;
#   - client.mjs: the admin API, the OpenAI API (chat, streaming, stop, n, seed,
#     logprobs, completions, embeddings, models, conversations), isolation between
#     tenants, revocation, limits, bad input while another tenant streams, disconnects;
#   - kb.mjs: the knowledge-base API (ingest, list, get, replace, delete, search),
#     grounded chat with citations, isolation between tenants' knowledge bases;
#   - `mcai kb ingest|search|list` on a data directory of its own (TREC output, the
#     progress bar on a terminal, number errors);
#   - SIGTERM during a stream: the stream gets one error event, the server exits 0.
# Environment: MCAI (the mcai binary, default build/mcai), MODEL (default
# $MCAI_SHARED/models/stories260K.gguf), MCAI_QUICK=1 for shorter generations (set
# automatically for the ASan build). Prints "ok - ..." / "FAIL - ..." lines and a final
# "integration: N passed, M failed"; exits 1 if anything failed.
set -u
cd "$(dirname "$0")/../.."
MCAI=${MCAI:-build/mcai}
MODEL=${MODEL:-${MCAI_SHARED:-../shared}/models/stories260K.gguf}
case "$MCAI" in *build-san*) MCAI_QUICK=${MCAI_QUICK:-1} ;; esac
MCAI_QUICK=${MCAI_QUICK:-0}
CTX=512

DIR=$(mktemp -d "${TMPDIR:-/tmp}/mcai-int.XXXXXX")
PID=""
cleanup() {
    [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null
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

[ -x "$MCAI" ] || { echo "FAIL - no mcai binary at $MCAI (run make)"; exit 1; }
[ -f "$MODEL" ] || { echo "FAIL - no model at $MODEL (set MCAI_SHARED or MODEL)"; exit 1; }

# ---- Start-up ------------------------------------------------------------------------

"$MCAI" serve --help > "$DIR/help" 2>&1
check "serve --help exits 0" 0 $?
contains "--help documents the key files" "$DIR/help" "--master-key-file"
contains "--help documents the config file" "$DIR/help" "--config"
contains "--help documents the knowledge-base memory budget" "$DIR/help" "--kb-cache-mb"

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

$C "$BASE/metrics" > "$DIR/metrics"
contains "curl: metrics in Prometheus text" "$DIR/metrics" "# TYPE mcai_requests_total counter"

# ---- The openai client ---------------------------------------------------------------

if [ -f tests/integration/node_modules/openai/package.json ] && command -v node > /dev/null; then
    MCAI_BASE=$BASE MCAI_ADMIN_KEY=$ADMIN MCAI_CTX=$CTX MCAI_QUICK=$MCAI_QUICK \
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

echo "integration: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
