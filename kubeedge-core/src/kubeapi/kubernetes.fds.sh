#!/usr/bin/env bash
# Regenerates kubernetes.fds: the protobuf descriptors (names, field numbers, types; no comments) of
# Kubernetes' stable API groups, compiled from the upstream generated.proto files.
#
# The .proto files come from the k8s-rs-pb crate (it ships upstream's files per Kubernetes minor),
# protoc from protoc-bin-vendored; both only for this script, neither is a dependency of the build.
#   bash kubeedge-core/src/kubeapi/kubernetes.fds.sh [k8s-rs-pb source dir] [minor, e.g. v1_33]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
registry=$(ls -d "$HOME"/.cargo/registry/src/*/ | head -1)
src=${1:-$(ls -d "$registry"k8s-rs-pb-* | sort -V | tail -1)}
minor=${2:-v1_33}
protoc=${PROTOC:-$(ls "$registry"protoc-bin-vendored-linux-x86_64-*/bin/protoc | sort -V | tail -1)}
cd "$src/src/$minor"
files=$( (find api -path '*/v1/generated.proto' -o -path '*/v2/generated.proto'
          echo apiextensions_apiserver/pkg/apis/apiextensions/v1/generated.proto
          find apimachinery -name generated.proto | grep -v testapigroup
          echo kube_aggregator/pkg/apis/apiregistration/v1/generated.proto) | sort)
# shellcheck disable=SC2086
"$protoc" -I. --include_imports -o "$here/kubernetes.fds" $files 2>/dev/null
echo "wrote $here/kubernetes.fds ($(wc -c <"$here/kubernetes.fds") bytes) from $src ($minor)"
