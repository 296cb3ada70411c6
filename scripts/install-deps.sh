#!/bin/sh
# Installs the Debian packages mcai builds, tests and benchmarks with.
# Idempotent: packages already present are left alone, so it is safe to re-run.
set -eu

PKGS="build-essential pkg-config clang libclang-rt-14-dev curl
libmicrohttpd-dev libjansson-dev libsodium-dev libsqlite3-dev sqlite3
libpcre2-dev libutf8proc-dev libcmocka-dev libcurl4-openssl-dev libxml2-dev
libhnswlib-dev libstemmer-dev g++"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi

# Node.js runs the integration tests with the official openai client. Machines that
# already carry a Node.js (with its own npm) keep it; Debian's packages otherwise.
if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi

# The integration tests' openai client, pinned by tests/integration/package-lock.json.
[ -f tests/integration/node_modules/openai/package.json ] ||
    (cd tests/integration && npm ci --no-audit --no-fund)
