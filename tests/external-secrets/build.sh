#!/usr/bin/env bash
# Builds the external-secrets controller: `build.sh OUT`. Used by the peer benchmark
# (src/devenv/external_secrets.rs) and by hand.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" github.com/external-secrets/external-secrets
