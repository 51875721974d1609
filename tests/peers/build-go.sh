#!/usr/bin/env bash
# Builds the Go test peers (each from its pinned module: go.mod and go.sum only) into the test
# cache, one after the other, and writes the variables the tests read to <env file>:
#
#   bash tests/peers/build-go.sh <env file>
#
# tests/run.sh starts it in the background, so that on an empty cache these builds (about three
# quarters of an hour on two cores) overlap the Rust builds rather than come before them; with
# the binaries cached it only prints their paths. A failed build exits non-zero and the env
# file stays incomplete: tests/run.sh then stops.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$#" -eq 1 ] || { echo "usage: $0 <env file>" >&2; exit 2; }
env_file=$1
: > "$env_file"
put() { printf 'export %s=%q\n' "$1" "$2" >> "$env_file"; }
if ! command -v go > /dev/null 2>&1; then export PATH="/usr/local/go/bin:$PATH"; fi
go version
built() { echo "$(date -u +%H:%M:%S) $1"; }

# Traefik (real peer for forward-auth tests); the first build takes minutes
# (tests/peers/traefik/README.md).
traefik_bin=$(bash tests/peers/go-build.sh tests/peers/traefik github.com/traefik/traefik/v3/cmd/traefik traefik | tail -1)
built "traefik $(grep -m1 -o 'traefik/v3 v[^ ]*' tests/peers/traefik/go.mod): $traefik_bin"
put TOLLGATE_TRAEFIK "$traefik_bin"

# Jaeger v2 (an OpenTelemetry Collector distribution: OTLP receivers, in-memory storage, query
# API); tests/e2e/otel.rs sends tollgate's and Envoy's spans to it.
jaeger_bin=$(GO_BUILD_LDFLAGS="-s -w" \
  bash tests/peers/go-build.sh tests/peers/jaeger github.com/jaegertracing/jaeger/cmd/jaeger jaeger | tail -1)
built "jaeger $(grep -m1 -o 'jaegertracing/jaeger v[^ ]*' tests/peers/jaeger/go.mod | cut -d' ' -f2): $jaeger_bin"
put TOLLGATE_JAEGER "$jaeger_bin"

# Envoy Gateway: tests/e2e/envoy_gateway.rs runs it standalone (file provider, Envoy as a host
# process: the Envoy of tests/run.sh, which it finds where func-e looks, so nothing is downloaded).
eg_version=$(grep -m1 -o 'envoyproxy/gateway v[^ ]*' tests/peers/envoy-gateway/go.mod | cut -d' ' -f2)
envoy_gateway_bin=$(GO_BUILD_LDFLAGS="-s -w -X github.com/envoyproxy/gateway/internal/cmd/version.envoyGatewayVersion=$eg_version" \
  bash tests/peers/go-build.sh tests/peers/envoy-gateway github.com/envoyproxy/gateway/cmd/envoy-gateway envoy-gateway | tail -1)
built "envoy-gateway $eg_version: $envoy_gateway_bin"
put TOLLGATE_ENVOY_GATEWAY "$envoy_gateway_bin"

# promtool: tests/e2e/alerts.rs checks and unit-tests the chart's alerting rules with it
# (promtool check rules, promtool test rules) and lints tollgate's /metrics.
prom_version=$(grep -m1 -o 'prometheus/prometheus v[^ ]*' tests/peers/promtool/go.mod | cut -d' ' -f2)
promtool_bin=$(GO_BUILD_LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=$prom_version" \
  bash tests/peers/go-build.sh tests/peers/promtool github.com/prometheus/prometheus/cmd/promtool promtool | tail -1)
built "$("$promtool_bin" --version | sed -n 1p): $promtool_bin"
put TOLLGATE_PROMTOOL "$promtool_bin"

# kube-apiserver and etcd (tests/kube): the tests run a real control plane with them
# (tests/e2e/cluster.rs).
kube_version=$(grep -m1 -o 'k8s.io/kubernetes v[^ ]*' tests/kube/go.mod | cut -d' ' -f2)
apiserver_bin=$(GO_BUILD_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=$(echo "$kube_version" | cut -d. -f1 | tr -d v) -X k8s.io/component-base/version.gitMinor=$(echo "$kube_version" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean" \
  bash tests/peers/go-build.sh tests/kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver | tail -1)
built "$("$apiserver_bin" --version): $apiserver_bin"
etcd_bin=$(bash tests/peers/go-build.sh tests/kube go.etcd.io/etcd/server/v3 etcd | tail -1)
built "$("$etcd_bin" --version | sed -n 1p): $etcd_bin"
put TOLLGATE_KUBE_APISERVER "$apiserver_bin"
put TOLLGATE_ETCD "$etcd_bin"
echo "all Go peers built" >&2
put TOLLGATE_GO_PEERS_DONE 1
