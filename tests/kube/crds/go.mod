// The CustomResourceDefinitions that deploy/examples and the chart's optional objects are
// checked against (tests/e2e/examples_schemas.rs), pinned: each module ships its project's CRD
// YAML. Only go.mod and go.sum are committed; nothing imports these modules, so never run
// `go mod tidy` here (it would drop them). tests/kube/crds.sh fetches exactly these versions
// with `go mod download` (checked against go.sum) and says which files it takes from each.
module tollgate.test/kube/crds

go 1.26.0

require (
	github.com/cert-manager/cert-manager v1.21.2
	github.com/emissary-ingress/emissary/v3 v3.10.0
	github.com/envoyproxy/gateway v1.9.1
	github.com/projectcontour/contour v1.33.8
	github.com/prometheus-operator/prometheus-operator v0.85.0
	github.com/traefik/traefik/v3 v3.6.12
	istio.io/api v1.32.0
	sigs.k8s.io/gateway-api v1.6.3
)
