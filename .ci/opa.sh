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

if [ ! -x "$OPA" ] || ! "$OPA" version 2>/dev/null | grep -qx "Version: ${OPA_VERSION#v}"; then
    command -v go >/dev/null || { echo "Go is needed to build OPA (go install)" >&2; exit 1; }
    echo "building OPA $OPA_VERSION from its Go module (once; cached in $GOBIN_DIR)" >&2
    mkdir -p "$GOBIN_DIR"
    started=$(date +%s)
    GOBIN="$GOBIN_DIR" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
        go install "github.com/open-policy-agent/opa@$OPA_VERSION" >&2
    echo "built OPA in $(( $(date +%s) - started )) s" >&2
fi
"$OPA" version | grep -qx "Version: ${OPA_VERSION#v}" || { echo "$OPA is not OPA $OPA_VERSION" >&2; exit 1; }
echo "$OPA"
