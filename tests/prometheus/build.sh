#!/usr/bin/env bash
# Builds Prometheus and promtool: `build.sh OUT` writes the server to OUT and promtool next to it (same directory).
# Used by the tests (src/devenv/prometheus.rs caches both) and by hand.
#
# Tags: `remove_all_sd` leaves out every service discovery but static and file (the tests only scrape static
# targets), which keeps the build small. `builtinassets` is NOT set: it embeds the web UI, whose compiled assets
# are made by npm and are not in the Go module (the tag fails to compile without them). Without it the server
# serves its UI from ./web/ui/static if that exists; here it does not, so the UI pages (/query, /graph…) answer
# 500 while the HTTP API (/api/v1/*), /-/ready and scraping, all the tests use, work normally.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:?usage: build.sh OUT}
v=$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
# The module's v0.3XX.Y is Prometheus 3.XX.Y (the Go module cannot carry a v3 major without a /v3 path).
minor=${v#v0.3}; minor=${minor%%.*}; patch=${v##*.}
pv="3.$((10#$minor)).$patch"
pkg=github.com/prometheus/common/version
ld="-s -w -X $pkg.Version=$pv -X $pkg.Revision=$v -X $pkg.Branch=module -X $pkg.BuildUser=keyward"
CGO_ENABLED=0 go build -trimpath -tags remove_all_sd -ldflags "$ld" -o "$out" github.com/prometheus/prometheus/cmd/prometheus
CGO_ENABLED=0 go build -trimpath -tags remove_all_sd -ldflags "$ld" -o "$(dirname "$out")/promtool" \
  github.com/prometheus/prometheus/cmd/promtool
