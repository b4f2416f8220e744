#!/usr/bin/env bash
# Runs every check and every test, as CI does. Needs only Go: the event store
# tests run the embedded store and an in-process test double of EventStoreDB's
# gRPC API; set POSTBOX_TEST_ESDB_URL to also run them against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/check.sh
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
echo "== go test tools/mutate"
go -C tools test -count=1 ./mutate
