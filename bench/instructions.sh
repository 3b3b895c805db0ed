#!/usr/bin/env bash
# Instructions per request of a Legate binary, counted by callgrind: stable on a shared,
# noisy machine where timings are not (and where this VM has no hardware counters).
#
# The proxy runs under `valgrind --tool=callgrind` with instrumentation off; after 2,000
# warm-up requests it is switched on for N HTTP/1.1 keep-alive requests (h2load --h1, 50
# connections), then off again. Uses the configs bench/http_bench.py writes (run it once
# first, e.g. `bench/http_bench.py --quick --only legate`); nginx is the upstream.
#
# Usage: bench/instructions.sh [legate binary] [requests]
#   prints the instructions per request for /direct (direct_response) and / (proxied)
#   With H2=1, the clients speak HTTP/2 cleartext (prior knowledge) instead of HTTP/1.1.
#   With TLS=1, HTTPS keep-alive (TLS 1.3, HTTP/1.1) on the configs bench/tls_bench.py writes
#   (run `bench/tls_bench.py --quick --only legate --tests https` once first): / only, and
#   the count includes the 50 connections' handshakes.
#   With KEEP=<dir>, the callgrind outputs stay there (direct.out, proxied.out) for
#   `callgrind_annotate --inclusive=yes <file>`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/legate}
N=${2:-20000}
CONF=$ROOT/bench/results/http_bench
URL=http://127.0.0.1:18410
MAKER="bench/http_bench.py --quick --only legate"
if [[ -n ${TLS:-} ]]; then
    CONF=$ROOT/bench/results/tls_bench
    URL=https://127.0.0.1:18810
    MAKER="bench/tls_bench.py --quick --only legate --tests https"
fi
[[ -f $CONF/bootstrap_legate.yaml && -f $CONF/nginx.conf ]] || {
    echo "no configs in $CONF: run $MAKER first" >&2
    exit 2
}
for tool in valgrind callgrind_control h2load nginx curl; do
    command -v "$tool" > /dev/null || { echo "missing: $tool" >&2; exit 2; }
done

# The clients' protocol: HTTP/1.1, or h2c with H2=1.
CLIENT=(--h1)
PROTOCOL=HTTP/1.1
if [[ -n ${H2:-} ]]; then
    CLIENT=()
    PROTOCOL=h2c
fi
if [[ -n ${TLS:-} ]]; then
    CLIENT=(--h1)
    PROTOCOL="HTTPS (TLS 1.3, HTTP/1.1)"
fi

OUT=$(mktemp -d)
nginx -c "$CONF/nginx.conf" > "$OUT/nginx.log" 2>&1 &
NGINX=$!
trap 'kill $NGINX 2> /dev/null; wait $NGINX 2> /dev/null; rm -rf "$OUT"' EXIT

count() { # path name
    local path=$1
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/cg.out" \
        "$BIN" -c "$CONF/bootstrap_legate.yaml" --concurrency 1 > "$OUT/legate.log" 2>&1 &
    local proxy=$!
    for _ in $(seq 1 120); do
        curl -sk -o /dev/null "$URL$path" && break
        sleep 0.5
    done
    h2load "${CLIENT[@]}" -n 2000 -c 50 -t 1 "$URL$path" > /dev/null
    callgrind_control -i on "$proxy" > /dev/null 2>&1
    local done_
    done_=$(h2load "${CLIENT[@]}" -n "$N" -c 50 -t 1 "$URL$path" | awk '/^requests:/ {print $8}')
    callgrind_control -i off "$proxy" > /dev/null 2>&1
    kill -TERM "$proxy"
    wait "$proxy" 2> /dev/null || true
    local total
    total=$(awk '/^totals:/ {print $2}' "$OUT/cg.out")
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        cp "$OUT/cg.out" "$KEEP/$2.out"
    fi
    printf '%-8s %6d instructions per request (%s of %s requests succeeded)\n' \
        "$path" $((total / N)) "$done_" "$N"
}

echo "callgrind: $BIN, $N requests per path, $PROTOCOL clients"
if [[ -z ${TLS:-} ]]; then
    count /direct direct
fi
count / proxied
