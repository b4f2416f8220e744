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
# Small wrong changes to the domain and to the parsers of outside bytes must
# be noticed by their tests (README "Mutation testing"; 1 to 4 minutes on
# 2 cores, no race detector): fails when a package scores below 95%.
echo "== mutation testing: domain, authtoken, seqext, hrpc (min score 95%)"
scripts/mutate.sh -jobs 2 -min-score 95 ./domain ./adapters/authtoken ./adapters/seqext ./adapters/hrpc
