#!/usr/bin/env bash
# Regenerates the plain manifests from the Helm chart (a test fails when they drift).
# Usage: HELM=/path/to/helm bash deploy/kubernetes/generate.sh
set -euo pipefail
cd "$(dirname "$0")"
helm="${HELM:-helm}"
chart=../helm/tollgate
header="# Generated from deploy/helm/tollgate by deploy/kubernetes/generate.sh; do not edit."
cp ../../crds/jwtpolicies.tollgate.dev.yaml base/jwtpolicies.tollgate.dev.yaml
{ echo "$header"; "$helm" template tollgate "$chart" --namespace tollgate --set webhook.enabled=false; } > base/tollgate.yaml
{ echo "$header"; "$helm" template tollgate "$chart" --namespace tollgate --set webhook.certManager.enabled=true \
    --show-only templates/webhook.yaml; } > webhook/webhook.yaml
