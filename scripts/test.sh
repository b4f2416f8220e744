#!/usr/bin/env bash
# Runs every check and every test, as CI does. Needs only Go: the event store
# tests run the embedded store and an in-process test double of EventStoreDB's
# gRPC API; set POSTBOX_TEST_ESDB_URL to also run them against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
# The last line is the verdict: "PASS: ..." or "FAIL: ... (step)".
step=checks
trap 'rc=$?; if [ $rc -eq 0 ]; then echo "PASS: all checks and tests passed"; else echo "FAIL: $step failed (exit $rc; see above)"; fi' EXIT
scripts/check.sh
step="go test -race"
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
step="go test tools/mutate"
echo "== go test tools/mutate"
go -C tools test -count=1 ./mutate
