#!/usr/bin/env bash
# Builds the control plane binary: `build.sh OUT`. Used by `cargo test` and `keyward dev` (src/devenv) and by hand.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
v=v1.36.3
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=36 -X $pkg.gitTreeState=clean"
done
CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$out" .
