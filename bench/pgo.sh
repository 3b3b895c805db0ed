#!/usr/bin/env bash
# A profile-guided build of Legate: the release build, laid out by what a proxy under load runs.
#
#   1. builds an instrumented Legate (`-Cprofile-generate`) in target/pgo-generate;
#   2. trains it on the benchmarks' own scenarios, run short (`--quick`): bench/http_bench.py
#      (HTTP/1.1 keep-alive, h2c, 1 MB responses, a connection per request, direct_response)
#      and bench/tls_bench.py (TLS 1.3 and 1.2 handshakes, HTTPS keep-alive, tcp_proxy);
#   3. merges the profiles (llvm-profdata of rustc's LLVM major: Debian's `llvm-<major>`);
#   4. builds Legate with them (`-Cprofile-use`) into target/pgo/<triple>/release/legate.
#
# Usage: bench/pgo.sh (about twice a release build's time, and a minute of training)
# Then e.g. `LEGATE=$PWD/target/pgo/x86_64-unknown-linux-gnu/release/legate bench/http_bench.py`.
# The flags go to the target only (`--target`), not to build scripts and proc macros.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRIPLE=$(rustc -vV | awk '/^host:/ {print $2}')
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
PROFDATA=$(command -v "llvm-profdata-$LLVM_MAJOR" || echo "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata")
[[ -x $PROFDATA ]] || {
    echo "needs llvm-profdata for LLVM $LLVM_MAJOR (rustc's): apt-get install llvm-$LLVM_MAJOR" >&2
    exit 2
}
for tool in h2load wrk nginx haproxy openssl; do
    command -v "$tool" > /dev/null || { echo "missing: $tool (bench/setup.sh)" >&2; exit 2; }
done

PROFILES=$ROOT/target/pgo-profiles
rm -rf "$PROFILES"
mkdir -p "$PROFILES/raw"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "1/4 instrumented build"
RUSTFLAGS="-Cprofile-generate=$PROFILES/raw" cargo build --release --locked -p legate \
    --target "$TRIPLE" --target-dir "$ROOT/target/pgo-generate"
GENERATE=$ROOT/target/pgo-generate/$TRIPLE/release/legate

step "2/4 training"
# Each instrumented proxy writes its counts when it exits; the bench scripts stop it with
# SIGTERM. (Their tables are for a training build and mean nothing; only Legate runs.)
LEGATE=$GENERATE "$ROOT/bench/http_bench.py" --quick --only legate \
    --tests h1,h2c,1mb,close,direct > "$PROFILES/http_bench.log"
LEGATE=$GENERATE "$ROOT/bench/tls_bench.py" --quick --only legate \
    --tests handshakes,handshakes12,https,tcp > "$PROFILES/tls_bench.log"
ls "$PROFILES"/raw/*.profraw > /dev/null

step "3/4 merging profiles"
"$PROFDATA" merge -o "$PROFILES/merged.profdata" "$PROFILES"/raw/*.profraw
# Named by its contents: cargo tracks the flags, not the file they name, so a new profile
# under the same name would leave every dependency built with the old one.
PROFILE=$PROFILES/legate-$(sha256sum "$PROFILES/merged.profdata" | cut -c1-16).profdata
mv "$PROFILES/merged.profdata" "$PROFILE"
ls -l "$PROFILE"

step "4/4 optimised build"
RUSTFLAGS="-Cprofile-use=$PROFILE" cargo build --release --locked -p legate \
    --target "$TRIPLE" --target-dir "$ROOT/target/pgo"
echo "built $ROOT/target/pgo/$TRIPLE/release/legate"
