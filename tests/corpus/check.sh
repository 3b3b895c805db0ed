#!/usr/bin/env bash
# Differential check of `--mode validate` between Legate and Envoy over the corpus.
# Usage: tests/corpus/check.sh [FILTER]   (FILTER: optional substring of file paths to run)
# Env:   LEGATE (default /work/main/target/debug/legate)
#        ENVOY  (default /work/main/.venv/bin/envoy)
#        ENVOY_BASE_ID (default 91), VERBOSE=1 to print outputs of failing files.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 2
LEGATE="${LEGATE:-/work/main/target/debug/legate}"
ENVOY="${ENVOY:-/work/main/.venv/bin/envoy}"
BASE_ID="${ENVOY_BASE_ID:-91}"
FILTER="${1:-}"
pass=0; fail=0

while IFS=$'\t' read -r file kind substr || [ -n "$file" ]; do
  case "$file" in ''|'#'*) continue ;; esac
  [ -n "$FILTER" ] && [[ "$file" != *"$FILTER"* ]] && continue
  reasons=()
  if [ ! -f "$file" ]; then
    reasons+=("file missing")
  else
    lout=$("$LEGATE" --mode validate -c "$file" 2>&1); lrc=$?
    eout=$(timeout 120 "$ENVOY" --mode validate -c "$file" --base-id "$BASE_ID" --log-level error 2>&1); erc=$?
    case "$kind" in
      ok)
        [ "$lrc" -eq 0 ] || reasons+=("legate exit $lrc, want 0")
        [ "$erc" -eq 0 ] || reasons+=("envoy exit $erc, want 0") ;;
      error)
        [ "$lrc" -eq 1 ] || reasons+=("legate exit $lrc, want 1")
        [ "$erc" -eq 1 ] || reasons+=("envoy exit $erc, want 1") ;;
      unsupported)
        [ "$lrc" -eq 1 ] || reasons+=("legate exit $lrc, want 1")
        [ "$erc" -eq 0 ] || reasons+=("envoy exit $erc, want 0")
        [[ "$substr" == *"not supported"* ]] || reasons+=("expect.txt substring lacks 'not supported'") ;;
      *) reasons+=("unknown kind '$kind'") ;;
    esac
    if [ "$kind" != ok ] && [ "$lrc" -ne 0 ]; then
      grep -qF -- "$substr" <<<"$lout" || reasons+=("legate output lacks: $substr")
    fi
  fi
  if [ ${#reasons[@]} -eq 0 ]; then
    echo "PASS $file"; pass=$((pass+1))
  else
    msg=$(printf '%s; ' "${reasons[@]}"); echo "FAIL $file: ${msg%; }"; fail=$((fail+1))
    if [ "${VERBOSE:-0}" = 1 ] && [ -f "$file" ]; then
      sed 's/^/    legate| /' <<<"$lout"
      grep -v '^[[:space:]]*$' <<<"$eout" | head -5 | cut -c1-300 | sed 's/^/    envoy | /'
    fi
  fi
done < expect.txt

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
