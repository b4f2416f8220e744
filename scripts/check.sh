#!/usr/bin/env bash
# Fails when generated code is stale, when buf lint or buf format complain,
# when a change breaks the wire or JSON format of the protos (checked against
# the committed descriptor image tools/wire-baseline.binpb, so it works in a
# fresh clone), or when gofmt, go vet or staticcheck find a problem.
set -euo pipefail
cd "$(dirname "$0")/.."
buf() { go tool -modfile=tools/go.mod buf "$@"; }

echo "== buf lint, format, breaking"
buf lint
buf format -d --exit-code
buf breaking --against tools/wire-baseline.binpb

echo "== generated code is current"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
buf generate --output "$tmp"
if ! diff -r "$tmp/gen" gen; then
  echo "gen/ is stale: run scripts/generate.sh and commit the result" >&2
  exit 1
fi
if ! go tool wire diff ./cmd/postbox ./internal/assembly; then
  echo "cmd/postbox/wire_gen.go or internal/assembly/wire_gen.go is stale: run scripts/generate.sh and commit the result" >&2
  exit 1
fi

echo "== gofmt, go vet"
# The files git tracks; outside a git checkout (a source archive), every
# Go file in the tree. Never an empty list: gofmt would read the terminal.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  gofiles=$(git ls-files '*.go')
else
  gofiles=$(find . -name '*.go' -not -path './.git/*')
fi
unformatted=$(gofmt -l $gofiles </dev/null)
if [ -n "$unformatted" ]; then
  echo "not gofmt-ed: $unformatted" >&2
  exit 1
fi
go vet ./...

echo "== staticcheck"
go tool -modfile=tools/go.mod staticcheck ./...
