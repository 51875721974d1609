#!/usr/bin/env bash
# Build a Go main package from a small pinned module (go.mod + go.sum, nothing vendored) into the
# test cache, once per go.sum.
#
#   bash tests/peers/go-build.sh <module dir> <package path> <binary name>
#
#   e.g. bash tests/peers/go-build.sh tests/peers/traefik github.com/traefik/traefik/v3/cmd/traefik traefik
#
# The binary goes to $CACHE/bin/<binary name>-<first 16 hex of sha256(go.sum)>; its path is the last
# line on stdout (progress goes to stderr). If that file exists, nothing is built. Idempotent and safe
# to run concurrently (build into a temp name, then an atomic rename).
#
# Environment:
#   TOLLGATE_TEST_CACHE  cache root (default $HOME/.cache/tollgate-test); the module cache is
#                        $CACHE/go/mod, the build cache $CACHE/go/build (deletable: -modcacherw)
#   GOTOOLCHAIN          passed through (e.g. GOTOOLCHAIN=go1.27.3 for a module needing Go 1.27)
#   GOFLAGS              appended after "-modcacherw -buildvcs=false" (e.g. GOFLAGS=-mod=mod)
#   GO_BUILD_LDFLAGS     optional -ldflags; when set it is hashed into the cache key too
#   GOPROXY, GONOSUMDB…  passed through as usual
set -euo pipefail

die() { echo "go-build.sh: error: $*" >&2; exit 1; }

[ "$#" -eq 3 ] || die "usage: $0 <module dir> <package path> <binary name>"
mod_dir=$1
pkg=$2
name=$3

case "$name" in
  ''|*/*|.|..) die "invalid binary name: '$name'" ;;
esac
[ -n "$pkg" ] || die "empty package path"
[ -d "$mod_dir" ] || die "module dir not found: $mod_dir"
mod_dir=$(cd "$mod_dir" && pwd -P)
[ -f "$mod_dir/go.mod" ] || die "no go.mod in $mod_dir"
[ -f "$mod_dir/go.sum" ] || die "no go.sum in $mod_dir (run 'go mod tidy' there and commit it)"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || die "'go' not found in PATH"

CACHE=${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)

sha256() { sha256sum | cut -c1-16; }
if [ -n "${GO_BUILD_LDFLAGS:-}" ]; then
  key=$( { cat "$mod_dir/go.sum"; printf '\nldflags=%s\n' "$GO_BUILD_LDFLAGS"; } | sha256)
else
  key=$(sha256 < "$mod_dir/go.sum")
fi
[ "${#key}" -eq 16 ] || die "could not hash $mod_dir/go.sum"

bin_dir=$CACHE/bin
out=$bin_dir/$name-$key
if [ -x "$out" ] && [ -f "$out" ]; then
  echo "go-build.sh: cached: $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$bin_dir" "$CACHE/go/mod" "$CACHE/go/build"
export GOMODCACHE=$CACHE/go/mod
export GOCACHE=$CACHE/go/build
export GOFLAGS="-modcacherw -buildvcs=false${GOFLAGS:+ $GOFLAGS}"
export CGO_ENABLED=0
if [ -n "${GOTOOLCHAIN:-}" ]; then export GOTOOLCHAIN; fi

tmp=$(mktemp "$bin_dir/.$name-$key.XXXXXX")
cleanup() { rm -f "$tmp"; }
trap cleanup EXIT

echo "go-build.sh: building $pkg from $mod_dir ($(go version)); GOFLAGS=$GOFLAGS" >&2
start=$(date +%s)
build_args=(build -trimpath -o "$tmp")
if [ -n "${GO_BUILD_LDFLAGS:-}" ]; then build_args+=(-ldflags "$GO_BUILD_LDFLAGS"); fi
build_args+=("$pkg")
# stdout of go goes to stderr too, so that the last stdout line stays the binary's path.
(cd "$mod_dir" && go "${build_args[@]}") >&2 || die "go build of $pkg in $mod_dir failed"
[ -s "$tmp" ] || die "go build produced no binary for $pkg"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "go-build.sh: built $out in $(( $(date +%s) - start ))s" >&2
echo "$out"
