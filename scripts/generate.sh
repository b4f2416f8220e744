#!/usr/bin/env bash
# Regenerates everything generated: Go and Connect code from api/ (buf), and
# the wire injectors (cmd/postbox/wire_gen.go, internal/assembly/wire_gen.go). buf runs from tools/go.mod;
# its first build takes a few minutes, later runs about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
go tool -modfile=tools/go.mod buf generate
go tool wire ./cmd/postbox ./internal/assembly
