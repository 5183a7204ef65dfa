#!/usr/bin/env bash
# Debian packages the build and the tests need, installed with apt (as root) when missing. Run by
# .ci/test (the README's test command) and first by .ci/run (clippy builds the etcd client).
set -euo pipefail
need=()
# Build: the etcd client (cloudcore's --datastore etcd://) compiles etcd's API definitions with
# protoc, whose well-known types (google/protobuf/*.proto) come with libprotobuf-dev.
# Devices: Debian's mosquitto (the MQTT broker of the event bus tests) and its clients
# (mosquitto_sub watches the delta topic); pymodbus, pinned, simulates a Modbus TCP device. BLE:
# no Bluetooth here, so BlueZ's D-Bus API is python3-dbusmock's bluez5 template on a private
# dbus-daemon. Replicas over etcd: Debian's etcd-server (the tests start their own members).
for pair in protobuf-compiler:/usr/bin/protoc \
            libprotobuf-dev:/usr/include/google/protobuf/descriptor.proto \
            etcd-server:/usr/bin/etcd \
            containerd:/usr/bin/containerd runc:/usr/sbin/runc busybox-static:/bin/busybox \
            containernetworking-plugins:/usr/lib/cni/bridge mosquitto:/usr/sbin/mosquitto \
            mosquitto-clients:/usr/bin/mosquitto_sub dbus-daemon:/usr/bin/dbus-daemon \
            python3-dbusmock:/usr/lib/python3/dist-packages/dbusmock openssl:/usr/bin/openssl \
            curl:/usr/bin/curl iptables:/usr/sbin/iptables iproute2:/usr/sbin/tc \
            python3-yaml:/usr/lib/python3/dist-packages/yaml xz-utils:/usr/bin/xz \
            bind9-dnsutils:/usr/bin/dig procps:/usr/bin/pgrep; do
  [[ -e "${pair#*:}" ]] || need+=("${pair%%:*}")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
