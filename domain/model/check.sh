#!/usr/bin/env bash
# Checks the delivery protocol model (delivery.pml) exhaustively with spin,
# and that breaking one of its rules on purpose makes spin find a violation.
# Fails on any error, on a truncated search, or on a broken rule that spin
# does not catch. Needs spin (Debian: apt-get install spin) and a C compiler.
#
#   domain/model/check.sh                 the checks CI runs (a few seconds)
#   domain/model/check.sh -DN=4 -DMAXF=4  one larger configuration, given as
#                                         spin -D options, correct model only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for tool in spin cc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "domain/model/check.sh: $tool is missing (Debian: apt-get install spin gcc)" >&2
    exit 1
  fi
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/delivery.pml" "$work/"
cd "$work"

# pan runs a full, safety-only search (assertions and invalid end states;
# -DSAFETY leaves out the cycle checks no property here needs). The search
# depth bound is far above the model's (about 170 steps): pan says so if it
# is ever reached, and that fails the check.
verify() {
  rm -f pan pan.* ./*.trail
  spin "$@" -a delivery.pml >/dev/null
  cc -O1 -w -DSAFETY -DVECTORSZ=4096 -o pan pan.c
  ./pan -m100000 >out.txt 2>&1 || true
}

fail=0
check_ok() {
  local name="$1"
  shift
  local start=$SECONDS
  verify "$@"
  local states errors
  states="$(awk '/states, stored/ {print $1; exit}' out.txt)"
  errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' out.txt | head -1)"
  if [ "$errors" != 0 ] || ! grep -q 'Full statespace search' out.txt ||
    grep -qE 'max search depth too small|out of memory|reached -DMEMLIM' out.txt; then
    echo "FAIL model $name ($*): spin found a problem or could not finish:"
    cat out.txt
    spin "$@" -t -p delivery.pml 2>/dev/null | tail -40 || true
    fail=1
    return
  fi
  echo "ok   model $name ($*): ${states:-?} states, 0 errors ($((SECONDS - start)) s)"
}

check_caught() {
  local rule="$1"
  shift
  verify "-D$rule" "$@"
  local errors
  errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' out.txt | head -1)"
  if [ "${errors:-0}" = 0 ]; then
    echo "FAIL broken rule $rule ($*): spin found no violation, so the model does not check that rule"
    fail=1
    return
  fi
  echo "ok   broken rule $rule ($*) is caught: $(grep -m1 -E '^pan:[0-9]+:' out.txt | sed 's/^pan:[0-9]*: //')"
}

if [ $# -gt 0 ]; then
  check_ok "custom" "$@"
  exit $fail
fi

# One direction: 3 events, 3 network faults, one crash of either server.
check_ok "one-way" -DLINKS=1 -DN=3 -DMAXF=3
# Both directions at once (each server sends to the other and pulls it):
# one event each way, one fault, one crash; the product is large, so small.
check_ok "two-way" -DLINKS=2 -DN=1 -DMAXF=1
# Each rule, broken alone, must make spin report a violation.
check_caught BREAK_SEQCHECK -DLINKS=1 -DN=3 -DMAXF=3
check_caught BREAK_ACK -DLINKS=1 -DN=3 -DMAXF=3
check_caught BREAK_PULLWAIT -DLINKS=1 -DN=3 -DMAXF=3
exit $fail
