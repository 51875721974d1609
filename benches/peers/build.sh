#!/usr/bin/env bash
# Builds every peer of the side-by-side benchmark (`cargo bench --bench peers`) from its pinned Go
# module under tests/peers/ into the test cache, once per go.sum (tests/peers/go-build.sh), and
# prints their paths. CI does not run this: the peers benchmark is run by hand.
#
#   bash benches/peers/build.sh
#
# Environment:
#   TOLLGATE_OPA_ENVOY_REPO  a git clone of github.com/open-policy-agent/opa-envoy-plugin holding
#                            the pinned commit. The Go module proxy reachable here answers 403 for
#                            every version of that module, so its source is taken from the clone
#                            (tests/peers/opa-envoy/README.md). Not needed once the binary is cached.
#   TOLLGATE_TEST_CACHE, GOPROXY, ...: as for tests/peers/go-build.sh.
#
# The benchmark finds the binaries itself (the same cache path); TOLLGATE_OPA_ENVOY and
# TOLLGATE_OAUTH2_PROXY name other ones.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "build.sh: error: $*" >&2; exit 1; }

# The opa-envoy-plugin commit tests/peers/opa-envoy/go.mod pins (tag v1.19.1-envoy).
OPA_ENVOY_COMMIT=e523fa83c9272619c3db208da2a85a0353f77314

cache=${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}
key=$(sha256sum < tests/peers/opa-envoy/go.sum | cut -c1-16)
if [ ! -x "$cache/bin/opa-envoy-$key" ]; then
  src=tests/peers/opa-envoy/src
  if [ ! -f "$src/.commit" ] || [ "$(cat "$src/.commit")" != "$OPA_ENVOY_COMMIT" ]; then
    repo=${TOLLGATE_OPA_ENVOY_REPO:-}
    [ -n "$repo" ] || die "set TOLLGATE_OPA_ENVOY_REPO to a git clone of github.com/open-policy-agent/opa-envoy-plugin (tests/peers/opa-envoy/README.md)"
    git -C "$repo" cat-file -e "$OPA_ENVOY_COMMIT^{commit}" 2>/dev/null \
      || die "$repo does not hold commit $OPA_ENVOY_COMMIT (tag v1.19.1-envoy): fetch its tags"
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$repo" archive "$OPA_ENVOY_COMMIT" | tar -x -C "$src"
    echo "$OPA_ENVOY_COMMIT" > "$src/.commit"
  fi
fi

opa=$(bash tests/peers/go-build.sh tests/peers/opa-envoy \
  github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin opa-envoy | tail -1)
oauth2_proxy=$(bash tests/peers/go-build.sh tests/peers/oauth2-proxy \
  github.com/oauth2-proxy/oauth2-proxy/v7 oauth2-proxy | tail -1)
authorino=$(bash tests/peers/go-build.sh tests/peers/authorino \
  github.com/kuadrant/authorino authorino | tail -1)

echo "TOLLGATE_OPA_ENVOY=$opa"
echo "TOLLGATE_OAUTH2_PROXY=$oauth2_proxy"
echo "TOLLGATE_AUTHORINO=$authorino"
