#!/usr/bin/env bash
# Open Policy Agent for the tests, built from its Go module at a pinned release and cached
# outside the clone, so a second run (or a second clone) reuses the binary and the Go build
# cache. Prints the binary's path on stdout; progress goes to stderr. Idempotent.
#
#   OPA_BIN="$(bash .ci/opa.sh)"
#
# The Go module proxy and the checksum database answer on this machine with Go's defaults
# (GOPROXY=https://proxy.golang.org, GOSUMDB=sum.golang.org), so nothing is overridden: the
# module's checksum is verified as usual. GOFLAGS=-buildvcs=false keeps `go install` from
# asking git about a working tree (there is none for a module fetched from the proxy).
set -euo pipefail

OPA_VERSION="${INTENTGATE_OPA_VERSION:-v1.22.3}"
CACHE="${INTENTGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/intentgate}"
GOBIN_DIR="$CACHE/opa-$OPA_VERSION"
OPA="$GOBIN_DIR/opa"

# the version the binary reports ("Version: 1.22.3"); sed reads all of it (grep -q would
# close the pipe early, and under pipefail opa's SIGPIPE would count as a mismatch)
built_version() { [ -x "$OPA" ] && "$OPA" version 2>/dev/null | sed -n 's/^Version: //p'; }

if [ "$(built_version || true)" != "${OPA_VERSION#v}" ]; then
    command -v go >/dev/null || { echo "Go is needed to build OPA (go install)" >&2; exit 1; }
    echo "building OPA $OPA_VERSION from its Go module (once; cached in $GOBIN_DIR)" >&2
    mkdir -p "$GOBIN_DIR"
    started=$(date +%s)
    GOBIN="$GOBIN_DIR" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
        go install "github.com/open-policy-agent/opa@$OPA_VERSION" >&2
    echo "built OPA in $(( $(date +%s) - started )) s" >&2
fi
[ "$(built_version)" = "${OPA_VERSION#v}" ] || { echo "$OPA is not OPA $OPA_VERSION" >&2; exit 1; }
echo "$OPA"
