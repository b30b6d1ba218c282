#!/usr/bin/env bash
# Builds egctl, Envoy Gateway's CLI: `build.sh OUT`. Used by the gateway tests (src/devenv/egctl.rs) and by hand.
# NB: default build flags (no -trimpath, cgo as Go decides) so that a `go install` of the same module version on
# this machine shares the compiled packages from Go's build cache; only the link is new.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
go build -ldflags "-s -w" -o "$out" github.com/envoyproxy/gateway/cmd/egctl
