#!/usr/bin/env bash
# The edge-only appliance example (examples/edge-appliance: the edge without its CRI client and YAML
# reader, the device twin without Modbus) joins a real cloudcore with a `keadm gettoken` token and
# exits 0 once connected; then starts again from its kept certificate, without a token.
set -euo pipefail
cd "$(dirname "$0")/.."
# cloudcore and keadm as .ci/test builds them; the appliance alone, with only its own features.
cargo build --locked -q --workspace --bins --examples
cargo build --locked -q -p edge-appliance
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/cloudcore" --data-dir "$work/cloud" --api-port 0 --bind-address 127.0.0.1 --hub-port 0 --https-port 0 \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^cloudcore ready' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.1
done
hub=$(sed -n 's/.* hub=\([^ ]*\).*/\1/p' "$work/out")
https=$(sed -n 's/.* https=\([^ ]*\).*/\1/p' "$work/out")
token=$("$bin/keadm" gettoken --data-dir "$work/cloud")
timeout 60 "$bin/edge-appliance" "$work/edge" appliance-1 "$hub" "$https" "$token" --once | tee "$work/first"
grep -q '^node appliance-1 connected' "$work/first"
timeout 60 "$bin/edge-appliance" "$work/edge" appliance-1 "$hub" "$https" --once | tee "$work/again"
grep -q '^node appliance-1 connected' "$work/again"
