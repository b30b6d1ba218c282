#!/usr/bin/env bash
# Builds the helm CLI: `build.sh OUT`. Used by the chart tests (src/devenv/helm.rs) and by hand.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
# The version helm reports, and the Kubernetes version `helm template`/`helm lint` assume (the Makefile derives it
# from client-go v0.37 → 1.37), set the way helm's own Makefile does.
v=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
ld="-s -w -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
done
CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$out" helm.sh/helm/v3/cmd/helm
