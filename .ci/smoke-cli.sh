#!/usr/bin/env bash
# The command-line contract of the binaries, as external checks use it: `cloudcore --data-dir D`
# runs the embedded control plane and writes D/admin.kubeconfig; `keadm gettoken --data-dir D`
# prints a join token for it; `keadm join` bootstraps an edge and writes its edgecore.yaml, and
# `edgecore --config` starts from it and registers the node; `mapper --protocol modbus` registers
# with edgecore's DMI socket, and a Device bound to the node comes back with its state in the
# cloud. Ports are picked by the OS (port 0); the ready lines say which.
set -euo pipefail
cd "$(dirname "$0")/.."
# The workspace's binaries as .ci/test builds them (a `-p` list would build them again).
cargo build --locked -q --workspace --bins --examples
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
pid=
epid=
mpid=
cleanup() {
  if [[ -n "$mpid" ]]; then kill "$mpid" 2>/dev/null || true; wait "$mpid" 2>/dev/null || true; fi
  if [[ -n "$epid" ]]; then kill "$epid" 2>/dev/null || true; wait "$epid" 2>/dev/null || true; fi
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# wait_ready PID NAME OUT ERR: until NAME's ready line is in OUT (10 s); its stderr if it dies.
wait_ready() {
  for _ in $(seq 1 100); do
    grep -q "^$2 ready" "$3" && return 0
    kill -0 "$1" 2>/dev/null || { cat "$4" >&2; exit 1; }
    sleep 0.1
  done
}
"$bin/cloudcore" --data-dir "$work/d" --api-port 0 --bind-address 127.0.0.1 --hub-port 0 --https-port 0 \
  >"$work/out" 2>"$work/err" &
pid=$!
wait_ready "$pid" cloudcore "$work/out" "$work/err"
grep '^cloudcore ready' "$work/out"
test -f "$work/d/admin.kubeconfig"
k() { env -u KUBECONFIG HOME="$work/home" timeout 30 kubectl --kubeconfig "$work/d/admin.kubeconfig" --cache-dir "$work/kcache" "$@"; }
namespaces=$(k get namespaces -o name)
grep -qx "namespace/default" <<<"$namespaces"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\ndata:\n  k: v\n' | k apply -f - >/dev/null
test "$(k get configmap smoke -o jsonpath='{.data.k}')" = v
token=$("$bin/keadm" gettoken --data-dir "$work/d")
test "$("$bin/keadm" checktoken --data-dir "$work/d" "$token")" = valid
hub=$(sed -n 's/.* hub=[^ ]*:\([0-9]*\).*/\1/p' "$work/out")
https=$(sed -n 's/.* https=[^ ]*:\([0-9]*\).*/\1/p' "$work/out")
"$bin/keadm" join --cloudcore-ipport "127.0.0.1:$hub" --certport "$https" --token "$token" \
  --edgenode-name smoke-edge --data-dir "$work/e" --runtime none | tee "$work/join"
grep -q '^\[3/3\]' "$work/join"
grep -q 'edgecore --config' "$work/join"
if grep -q "$token" "$work/e/edgecore.yaml"; then echo "the token was kept in edgecore.yaml" >&2; exit 1; fi
"$bin/edgecore" --config "$work/e/edgecore.yaml" --metaserver-port 0 --mqtt-internal 127.0.0.1:0 >"$work/eout" 2>"$work/eerr" &
epid=$!
wait_ready "$epid" edgecore "$work/eout" "$work/eerr"
grep '^edgecore ready node=smoke-edge' "$work/eout"
for _ in $(seq 1 100); do
  k get node smoke-edge -o name 2>/dev/null | grep -q node/smoke-edge && break
  sleep 0.2
done
k get node smoke-edge -o name | grep -qx node/smoke-edge
dmi=$(sed -n 's/.* dmi=\([^ ]*\).*/\1/p' "$work/eout")
"$bin/mapper" --protocol modbus --edgecore-socket "$dmi" --socket "$work/modbus.sock" \
  >"$work/mout" 2>"$work/merr" &
mpid=$!
wait_ready "$mpid" mapper "$work/mout" "$work/merr"
grep '^mapper ready protocol=modbus' "$work/mout"
# A Modbus device on a port nobody listens on: the mapper gets it over DMI and reports it offline.
dead=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata:\n  name: meter\nspec:\n  protocol: modbus\n  properties:\n  - name: power\n    type: INT\n---\napiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: meter-1\nspec:\n  deviceModelRef:\n    name: meter\n  nodeName: smoke-edge\n  protocol:\n    protocolName: modbus\n    configData:\n      ip: 127.0.0.1\n      port: %s\n  properties:\n  - name: power\n    reportToCloud: true\n    visitors:\n      protocolName: modbus\n      configData:\n        register: HoldingRegister\n        offset: 0\n' "$dead" \
  | k apply -f - >/dev/null
for _ in $(seq 1 150); do
  [[ "$(k get device meter-1 -o jsonpath='{.status.state}')" == offline ]] && break
  sleep 0.2
done
test "$(k get device meter-1 -o jsonpath='{.status.state}')" = offline
kill -TERM "$mpid"
wait "$mpid"
mpid=
kill -TERM "$epid"
wait "$epid"
epid=
kill -TERM "$pid"
wait "$pid"
pid=
# A datastore that is not one: exit 1 at once, saying what was expected.
if "$bin/cloudcore" --data-dir "$work/bad" --datastore http://127.0.0.1:1 >"$work/bout" 2>"$work/berr"; then
  echo "cloudcore took --datastore http://..." >&2; exit 1
fi
grep -q 'expected etcd://host:port' "$work/berr" || { cat "$work/berr" >&2; exit 1; }
echo "cloudcore, keadm, edgecore and mapper: command-line contract holds"
