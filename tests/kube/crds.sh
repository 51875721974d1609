#!/usr/bin/env bash
# Collect the CustomResourceDefinitions of the gateways and operators that deploy/examples and the
# chart's optional objects use, from the Go modules pinned in tests/kube/crds (go.mod and go.sum
# only), into the test cache, once per go.mod, go.sum and this script.
#
#   bash tests/kube/crds.sh
#
# The folder's path is the last line on stdout (progress goes to stderr); it holds one folder
# per source (gateway-api/, gateway-api-experimental/, istio/, ...) with that project's CRD files
# as shipped, and
# SOURCES (module, version and file of each). tests/e2e/examples_schemas.rs installs them
# into a real API server (TOLLGATE_GATEWAY_CRDS=<folder>).
#
# Each module is fetched with `go mod download` at the version go.mod requires and checked
# against go.sum: a module or version missing from go.sum, or a different zip, is an error. No
# module is built. To change a version: edit go.mod, then in tests/kube/crds run
#   rm go.sum && go mod download -json MODULE@VERSION ...   (every require line)
# and commit go.mod and go.sum.
#
# Environment: TOLLGATE_TEST_CACHE (default $HOME/.cache/tollgate-test); the module cache is
# $CACHE/go/mod, as for tests/peers/go-build.sh. GOPROXY, GOFLAGS… are passed through.
set -euo pipefail

die() { echo "crds.sh: error: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd -P)
mod_dir=$here/crds
self=$here/$(basename "$0")
[ -f "$mod_dir/go.mod" ] && [ -f "$mod_dir/go.sum" ] || die "no go.mod and go.sum in $mod_dir"
if ! command -v go > /dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go > /dev/null 2>&1 || die "'go' not found in PATH"

# What to take from each module: <module> <folder> <file pattern relative to the module>...
# A module may have more than one line (one folder each).
# Gateway API's standard channel (what a cluster has unless it opts into experimental fields;
# Envoy Gateway's own copy of these CRDs is left out), and its experimental channel in a folder
# of its own: the same CRD names with more fields and kinds (the ExternalAuth filter of GEP-1494),
# which replace the standard ones in a cluster, so a test installs one folder or the other.
# Istio's CRDs come from istio.io/api,
# where they are generated (istio.io/istio only copies them, and the proxy serves it only as
# pseudo-versions of a far larger module). Emissary's file also holds its conversion webhook's
# Deployment and RBAC, which the test leaves out.
SOURCES='
sigs.k8s.io/gateway-api gateway-api config/crd/standard/gateway.networking.k8s.io_*.yaml
sigs.k8s.io/gateway-api gateway-api-experimental config/crd/experimental/gateway.networking.k8s.io_*.yaml config/crd/experimental/gateway.networking.x-k8s.io_*.yaml
github.com/envoyproxy/gateway envoy-gateway charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_*.yaml
istio.io/api istio kubernetes/customresourcedefinitions.gen.yaml
github.com/projectcontour/contour contour examples/contour/01-crds.yaml
github.com/emissary-ingress/emissary/v3 emissary manifests/emissary/emissary-crds.yaml.in
github.com/cert-manager/cert-manager cert-manager deploy/crds/*.yaml
github.com/prometheus-operator/prometheus-operator prometheus-operator example/prometheus-operator-crd/monitoring.coreos.com_*.yaml
github.com/traefik/traefik/v3 traefik docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml
'

CACHE=${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
key=$(cat "$mod_dir/go.mod" "$mod_dir/go.sum" "$self" | sha256sum | cut -c1-16)
out=$CACHE/crds/gateway-crds-$key
if [ -f "$out/SOURCES" ]; then
  echo "crds.sh: cached: $out" >&2
  echo "$out"
  exit 0
fi

# The require lines of go.mod, "module version" per line (block or single-line form).
requires=$(awk '
  /^require[ \t]*\(/ { block = 1; next }
  block && /^\)/ { block = 0; next }
  block && NF >= 2 && $1 !~ /^\/\// { print $1, $2 }
  !block && $1 == "require" && $2 != "(" { print $2, $3 }
' "$mod_dir/go.mod")
[ -n "$requires" ] || die "no require lines in $mod_dir/go.mod"
while read -r module _; do
  echo "$SOURCES" | awk -v m="$module" '$1 == m { found = 1 } END { exit !found }' \
    || die "$module is required in go.mod but this script takes no file from it"
done <<< "$requires"
while read -r module _; do
  [ -n "$module" ] || continue
  echo "$requires" | awk -v m="$module" '$1 == m { found = 1 } END { exit !found }' \
    || die "$module is listed here but not required in $mod_dir/go.mod"
done <<< "$SOURCES"

export GOMODCACHE=$CACHE/go/mod
export GOFLAGS="-modcacherw${GOFLAGS:+ $GOFLAGS}"
mkdir -p "$GOMODCACHE" "$CACHE/crds"
work=$(mktemp -d)
tmp_out=$(mktemp -d "$CACHE/crds/.gateway-crds-$key.XXXXXX")
cleanup() { rm -rf "$work" "$tmp_out"; }
trap cleanup EXIT
# A copy of the module, so that go.sum stays as committed: go would add missing lines to it.
cp "$mod_dir/go.mod" "$mod_dir/go.sum" "$work/"

start=$(date +%s)
while read -r module version; do
  json=$(cd "$work" && go mod download -json "$module@$version") \
    || die "go mod download $module@$version failed: $json"
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [ -d "$dir" ] || die "no module folder for $module@$version in: $json"
  if ! cmp -s "$work/go.sum" "$mod_dir/go.sum"; then
    die "$module@$version is not in $mod_dir/go.sum: see the top of this script to update it"
  fi
  echo "$SOURCES" | awk -v m="$module" '$1 == m { for (i = 3; i <= NF; i++) print $2, $i }' |
    while read -r folder pattern; do
      mkdir -p "$tmp_out/$folder"
      found=0
      for file in "$dir"/$pattern; do
        [ -f "$file" ] || continue
        found=1
        name=$(basename "$file" .in)
        cp "$file" "$tmp_out/$folder/$name"
        chmod 0644 "$tmp_out/$folder/$name"
        echo "$folder/$name $module@$version ${file#"$dir"/}" >> "$tmp_out/SOURCES.tmp"
      done
      [ "$found" = 1 ] || die "$module@$version has no file $pattern"
    done
done <<< "$requires"
mv "$tmp_out/SOURCES.tmp" "$tmp_out/SOURCES"
chmod 0755 "$tmp_out"
# Another run may have finished first: its folder is as good as this one.
if ! mv -T "$tmp_out" "$out" 2> /dev/null; then
  [ -f "$out/SOURCES" ] || die "could not move the collected files to $out"
fi
echo "crds.sh: collected $(wc -l < "$out/SOURCES") files into $out in $(( $(date +%s) - start ))s" >&2
echo "$out"
