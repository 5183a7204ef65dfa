#!/usr/bin/env bash
# The command-line contract of the binaries, as external checks use it: `cloudcore --data-dir D`
# runs the embedded control plane and writes D/admin.kubeconfig; `keadm gettoken --data-dir D`
# prints a join token for it. Ports are picked by the OS (port 0); the ready line says which.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p cloudcore -p keadm
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/cloudcore" --data-dir "$work/d" --api-port 0 --bind-address 127.0.0.1 --hub-port 0 --https-port 0 \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^cloudcore ready' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.1
done
grep '^cloudcore ready' "$work/out"
test -f "$work/d/admin.kubeconfig"
k() { env -u KUBECONFIG HOME="$work/home" timeout 30 kubectl --kubeconfig "$work/d/admin.kubeconfig" --cache-dir "$work/kcache" "$@"; }
namespaces=$(k get namespaces -o name)
grep -qx "namespace/default" <<<"$namespaces"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\ndata:\n  k: v\n' | k apply -f - >/dev/null
test "$(k get configmap smoke -o jsonpath='{.data.k}')" = v
token=$("$bin/keadm" gettoken --data-dir "$work/d")
test "$("$bin/keadm" checktoken --data-dir "$work/d" "$token")" = valid
kill -TERM "$pid"
wait "$pid"
pid=
echo "cloudcore and keadm: command-line contract holds"
