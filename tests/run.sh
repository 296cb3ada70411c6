#!/bin/sh
# Runs each test program given as an argument, adds up cmocka's per-program summaries
# and prints one final line "N passed, N failed" that CI reads. Exits 1 if any test
# failed or any program crashed. Tests find the shared models through MCAI_SHARED
# (default ../shared, where CI puts it beside the checkout).
: "${MCAI_SHARED:=../shared}"
export MCAI_SHARED
passed=0
failed=0
crashed=""
for t in "$@"; do
    name=$(basename "$t")
    out=$("$t" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    if [ $rc -ne 0 ] && [ -z "$f" ]; then
        crashed="$crashed $name"
        failed=$((failed + 1))
    fi
done
[ -n "$crashed" ] && echo "crashed or failed without a cmocka summary:$crashed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
