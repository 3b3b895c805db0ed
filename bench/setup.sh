#!/usr/bin/env bash
# Installs what bench/http_bench.py, bench/tls_bench.py and bench/instructions.sh need on a
# Debian machine, if missing: haproxy, nginx-light, wrk, h2load (nghttp2-client), openssl
# (tls_bench.py's certificates), valgrind (instructions.sh), curl, and for bench/pgo.sh the
# llvm-profdata of rustc's LLVM version (`llvm-<major>`, when the archive has it).
# Envoy comes from the project virtualenv (scripts/test.sh); Legate from `cargo build --release`.
# Installs only; starts no service.
set -euo pipefail

declare -A want=([haproxy]=haproxy [nginx]=nginx-light [wrk]=wrk [h2load]=nghttp2-client [openssl]=openssl [valgrind]=valgrind [curl]=curl)
missing=()
for bin in "${!want[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("${want[$bin]}")
done
llvm_major=$(rustc -vV 2>/dev/null | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
want_llvm=false
if [[ -n $llvm_major && ! -x /usr/lib/llvm-$llvm_major/bin/llvm-profdata ]]; then
    want_llvm=true
fi
if ((${#missing[@]} == 0)) && ! $want_llvm; then
    echo "bench/setup.sh: haproxy, nginx, wrk, h2load, openssl, valgrind, curl and llvm-profdata are installed"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update
# Whether the archive has rustc's LLVM is known only once the package lists are there (a fresh
# machine has none).
if $want_llvm; then
    if apt-cache show "llvm-$llvm_major" >/dev/null 2>&1; then
        missing+=("llvm-$llvm_major")
    else
        echo "bench/setup.sh: the archive has no llvm-$llvm_major; bench/pgo.sh needs its llvm-profdata" >&2
    fi
fi
if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "bench/setup.sh: installing ${missing[*]}"
# On a machine with an init system Debian may start the nginx/haproxy services; the benchmark
# uses its own ports and processes and does not touch them.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
