#!/usr/bin/env bash
# Mutation testing: how many small wrong changes to a package's code its
# tests notice (tools/mutate). Examples:
#   scripts/mutate.sh ./domain ./adapters/seqext
#   scripts/mutate.sh -min-score 95 -jobs 2 ./domain
# The tool builds from tools/go.mod; the mutants run through go test -overlay,
# so the tree is never changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/mutate
trap 'rm -rf "$(dirname "$bin")"' EXIT
go -C tools build -o "$bin" ./mutate
"$bin" "$@"
