#!/usr/bin/env bash
# Runs every check and every test, as CI does. Needs Go, and spin with a C
# compiler for the protocol model (.ci/run installs them). The event store
# tests run the embedded store and an in-process test double of EventStoreDB's
# gRPC API; set POSTBOX_TEST_ESDB_URL to also run them against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
# The last line is the verdict: "PASS: ..." or "FAIL: ... (step)".
step=checks
trap 'rc=$?; if [ $rc -eq 0 ]; then echo "PASS: all checks and tests passed"; else echo "FAIL: $step failed (exit $rc; see above)"; fi' EXIT
scripts/check.sh
step="protocol model (spin)"
# The delivery protocol's bounded model, checked exhaustively, and each of
# its rules broken on purpose must be caught (README "Protocol model");
# needs spin and a C compiler (Debian: apt-get install spin gcc).
echo "== protocol model: spin (domain/model/check.sh)"
domain/model/check.sh
step="go test -race"
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
step="simulation (200 seeds)"
# The federation simulated under seeded faults (README "Simulation"): 200
# seeds without the race detector (about 40 s; `go test -race` above runs a
# few). Each passing seed's own line is left out; the summary line stays.
echo "== simulation: 200 seeds (internal/sim)"
POSTBOX_SIM_SEEDS=200 go test -count=1 -timeout 3m -run '^TestSimulation$' -v ./internal/sim |
	grep -vE '^=== RUN|^ +--- PASS|^ +sim_test.go:[0-9]+: seed [0-9]+: '
step="go test tools/mutate"
echo "== go test tools/mutate"
go -C tools test -count=1 ./mutate
# Small wrong changes to the domain, the parsers of outside bytes and the
# projections must be noticed by their tests (README "Mutation testing";
# about a minute on 2 cores with mutant schemata, no race detector): fails
# when a package scores below its threshold.
echo "== mutation testing: domain, authtoken, seqext, hrpc (min score 95%)"
scripts/mutate.sh -jobs 2 -min-score 95 ./domain ./adapters/authtoken ./adapters/seqext ./adapters/hrpc
echo "== mutation testing: projections (min score 90%)"
scripts/mutate.sh -jobs 2 -min-score 90 ./projections
# The store records' codec: much of it is tested from the packages that
# use it, so its own score is lower; the floor keeps it from falling.
echo "== mutation testing: streams (min score 70%)"
scripts/mutate.sh -jobs 2 -min-score 70 ./adapters/streams
