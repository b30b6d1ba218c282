#!/usr/bin/env bash
# Builds egctl, Envoy Gateway's CLI: `build.sh OUT`. Used by the gateway tests (src/devenv/egctl.rs) and by hand.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" github.com/envoyproxy/gateway/cmd/egctl
