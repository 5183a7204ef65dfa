#!/usr/bin/env bash
# Everyday kubectl against the embedded control plane, each command checked for its effect, once
# per kubectl minor given (default 27 and 33): cloudcore reports that minor on /version and the
# machine's kubectl dispatcher runs the matching kubectl. Covered: create ns/cm/secret/sa/token,
# run, expose, scale, label/annotate, get -w, describe with events, delete --all, delete ns,
# apply --server-side (a conflict without --force-conflicts, a dropped field removed),
# apply --dry-run=server (nothing stored), auth can-i as a ServiceAccount bound to `view`, a
# client certificate requested, approved and signed (and one denied), and
# bad input (a truncated protobuf body, a ConfigMap value that is not a string (422 naming the
# key), a CR breaking its schema, an unknown field with
# --validate=strict, a 3 MiB object), after which the server still serves.
set -euo pipefail
cd "$(dirname "$0")/.."
# The workspace's binaries as .ci/test builds them (a `-p` list would build them again).
cargo build --locked -q --workspace --bins --examples
bin=${CARGO_TARGET_DIR:-target}/debug
minors=("$@")
((${#minors[@]})) || minors=(27 33)
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }
# expect TEXT PATTERN WHAT
expect() { grep -q -- "$2" <<<"$1" || fail "$3: expected /$2/ in: $1"; }

for minor in "${minors[@]}"; do
  rm -rf "$work/d" "$work/home" "$work/kcache"
  "$bin/cloudcore" --data-dir "$work/d" --api-port 0 --bind-address 127.0.0.1 --hub-port 0 \
    --https-port 0 --kube-minor "$minor" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 1 100); do grep -q '^cloudcore ready' "$work/out" && break; sleep 0.1; done
  grep -q '^cloudcore ready' "$work/out" || { cat "$work/err" >&2; fail "cloudcore did not start"; }
  api=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' "$work/out")
  k() { env -u KUBECONFIG HOME="$work/home" timeout 30 kubectl --kubeconfig "$work/d/admin.kubeconfig" --cache-dir "$work/kcache" "$@"; }
  echo "--- kubectl against a server reporting 1.$minor"
  v=$(k version -o json)
  expect "$v" "\"minor\": \"$minor\"" "server minor"
  expect "$v" "\"gitVersion\": \"v1.$minor" "client minor (the dispatcher)"

  # Namespaces, ConfigMaps, Secrets, ServiceAccounts (protobuf bodies from kubectl create).
  k create namespace shop >/dev/null
  test "$(k get ns shop -o jsonpath='{.status.phase}')" = Active || fail "namespace phase"
  for _ in $(seq 1 20); do k get sa default -n shop >/dev/null 2>&1 && break; sleep 0.1; done
  k get sa default -n shop -o name | grep -qx serviceaccount/default || fail "default ServiceAccount"
  k get cm kube-root-ca.crt -n shop -o jsonpath='{.data.ca\.crt}' | grep -q 'BEGIN CERTIFICATE' || fail "kube-root-ca.crt"
  k create configmap settings -n shop --from-literal=color=blue >/dev/null
  test "$(k get cm settings -n shop -o jsonpath='{.data.color}')" = blue || fail "configmap data"
  k create secret generic creds -n shop --from-literal=password=s3cret >/dev/null
  test "$(k get secret creds -n shop -o jsonpath='{.data.password}' | base64 -d)" = s3cret || fail "secret data"
  test "$(k get secret creds -n shop -o jsonpath='{.type}')" = Opaque || fail "secret type defaulted"
  k create serviceaccount robot -n shop >/dev/null
  token=$(k create token robot -n shop --duration=1h)
  [[ $token == *.*.* ]] || fail "token: $token"

  # run, expose, scale, label, annotate.
  k run web -n shop --image=nginx:1.27 --port=80 --labels=app=web >/dev/null
  test "$(k get pod web -n shop -o jsonpath='{.spec.containers[0].imagePullPolicy}')" = IfNotPresent || fail "pod defaults"
  k expose pod web -n shop --port=8080 --target-port=80 --name=web >/dev/null
  test "$(k get svc web -n shop -o jsonpath='{.spec.ports[0].targetPort}')" = 80 || fail "expose target port"
  test "$(k get svc web -n shop -o jsonpath='{.spec.selector.app}')" = web || fail "expose selector"
  [[ $(k get svc web -n shop -o jsonpath='{.spec.clusterIP}') == 10.9[6-9].* ]] || fail "ClusterIP allocated"
  k create service nodeport edge-ui -n shop --tcp=80:8080 >/dev/null
  np=$(k get svc edge-ui -n shop -o jsonpath='{.spec.ports[0].nodePort}')
  ((np >= 30000 && np <= 32767)) || fail "node port allocated: $np"
  ip=$(k get svc edge-ui -n shop -o jsonpath='{.spec.clusterIP}')
  k label svc edge-ui -n shop tier=edge >/dev/null
  test "$(k get svc edge-ui -n shop -o jsonpath='{.spec.clusterIP}:{.spec.ports[0].nodePort}')" = "$ip:$np" || fail "allocations kept"
  k create deployment api -n shop --image=busybox:1.36 --replicas=2 >/dev/null
  k scale deployment api -n shop --replicas=5 >/dev/null
  test "$(k get deploy api -n shop -o jsonpath='{.spec.replicas}')" = 5 || fail "scale"
  k label pod web -n shop tier=front >/dev/null
  test "$(k get pods -n shop -l tier=front -o name)" = pod/web || fail "label"
  k annotate pod web -n shop owner=ops >/dev/null
  test "$(k get pod web -n shop -o jsonpath='{.metadata.annotations.owner}')" = ops || fail "annotate"

  # get -w sees a change made while it watches.
  k get cm -n shop -w -o name >"$work/watch" 2>&1 &
  wpid=$!
  sleep 1
  k create configmap late -n shop --from-literal=a=b >/dev/null
  for _ in $(seq 1 50); do grep -q 'configmap/late' "$work/watch" && break; sleep 0.1; done
  kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  grep -q 'configmap/late' "$work/watch" || fail "get -w: $(cat "$work/watch")"

  # describe shows an event recorded through events.k8s.io.
  uid=$(k get pod web -n shop -o jsonpath='{.metadata.uid}')
  k create -f - >/dev/null <<YAML
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: web.1, namespace: shop}
eventTime: "2026-01-01T00:00:00.000000Z"
reportingController: kubeedge.io/checker
reportingInstance: checker-1
action: Checked
reason: Checked
note: the pod was checked
type: Normal
regarding: {apiVersion: v1, kind: Pod, name: web, namespace: shop, uid: $uid}
YAML
  d=$(k describe pod web -n shop)
  expect "$d" "the pod was checked" "describe shows the event"

  # apply --dry-run=server stores nothing; apply --server-side owns fields.
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\n  namespace: shop\ndata:\n  a: b\n' >"$work/dry.yaml"
  expect "$(k apply --dry-run=server -f "$work/dry.yaml")" "server dry run" "dry run answered"
  if k get cm dry -n shop >/dev/null 2>&1; then fail "dry run stored the object"; fi
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  namespace: shop\ndata:\n  keep: "1"\n  drop: "2"\n' >"$work/ssa1.yaml"
  expect "$(k apply --server-side -f "$work/ssa1.yaml")" "serverside-applied" "server-side apply"
  k patch cm owned -n shop --type=merge -p '{"data":{"keep":"changed"}}' >/dev/null
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  namespace: shop\ndata:\n  keep: "1"\n' >"$work/ssa2.yaml"
  if out=$(k apply --server-side -f "$work/ssa2.yaml" 2>&1); then fail "apply without --force-conflicts succeeded: $out"; fi
  expect "$out" "conflict" "apply conflict"
  k apply --server-side --force-conflicts -f "$work/ssa2.yaml" >/dev/null
  test "$(k get cm owned -n shop -o jsonpath='{.data.keep}')" = 1 || fail "forced apply"
  test -z "$(k get cm owned -n shop -o jsonpath='{.data.drop}')" || fail "a dropped field was kept"
  expect "$(k get cm owned -n shop -o jsonpath='{.metadata.managedFields[*].manager}')" "kubectl" "managedFields"

  # auth can-i as a ServiceAccount bound to view.
  k create rolebinding robot-view -n shop --clusterrole=view --serviceaccount=shop:robot >/dev/null
  test "$(k auth can-i list pods -n shop --as=system:serviceaccount:shop:robot)" = yes || fail "can-i list (view)"
  if k auth can-i delete pods -n shop --as=system:serviceaccount:shop:robot >/dev/null; then fail "can-i delete (view)"; fi
  ks() { env -u KUBECONFIG HOME="$work/home" timeout 30 kubectl --server "$api" --certificate-authority "$work/d/ca/rootCA.crt" --token "$token" --cache-dir "$work/kcache2" "$@"; }
  test "$(ks auth can-i list pods -n shop)" = yes || fail "can-i as the token's user"
  if ks auth can-i create deployments -n shop >/dev/null 2>&1; then fail "can-i create (view)"; fi
  expect "$(ks get pods -n shop -o name)" "pod/web" "the token lists pods"
  if ks delete pod web -n shop >/dev/null 2>&1; then fail "view deleted a pod"; fi

  # A client certificate through certificates.k8s.io: approved and signed, or denied.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/jane.key" \
    -subj "/CN=jane/O=devs" -out "$work/jane.csr" 2>/dev/null
  for who in jane mallory; do
    k create -f - >/dev/null <<YAML
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {name: $who}
spec:
  request: $(base64 -w0 <"$work/jane.csr")
  signerName: kubernetes.io/kube-apiserver-client
  expirationSeconds: 3600
  usages: [client auth]
YAML
  done
  k certificate approve jane >/dev/null
  k certificate deny mallory >/dev/null
  for _ in $(seq 1 50); do [[ -n $(k get csr jane -o jsonpath='{.status.certificate}') ]] && break; sleep 0.1; done
  k get csr jane -o jsonpath='{.status.certificate}' | base64 -d >"$work/jane.crt"
  grep -q 'BEGIN CERTIFICATE' "$work/jane.crt" || fail "approved CSR not signed"
  test "$(k get csr mallory -o jsonpath='{.status.conditions[0].type}')" = Denied || fail "denied CSR"
  test -z "$(k get csr mallory -o jsonpath='{.status.certificate}')" || fail "denied CSR signed"
  kj() { env -u KUBECONFIG HOME="$work/home" timeout 30 kubectl --server "$api" --certificate-authority "$work/d/ca/rootCA.crt" --client-certificate "$work/jane.crt" --client-key "$work/jane.key" --cache-dir "$work/kcache3" "$@"; }
  if kj get pods -n shop >/dev/null 2>&1; then fail "jane listed pods without a role"; fi
  k create rolebinding devs-edit -n shop --clusterrole=edit --group=devs >/dev/null
  expect "$(kj get pods -n shop -o name)" "pod/web" "jane's group bound to edit"

  # Bad input: a 4xx Status each, nothing stored, the server keeps serving.
  printf 'k8s\0\x0a\x0d\x0a\x02v1\x12\x09ConfigMap\x12\x40\x0a' >"$work/truncated.pb"
  code=$(curl -s -o "$work/body" -w '%{http_code}' --cacert "$work/d/ca/rootCA.crt" --cert "$work/d/certs/admin.crt" \
    --key "$work/d/certs/admin.key" -H 'Content-Type: application/vnd.kubernetes.protobuf' \
    --data-binary @"$work/truncated.pb" "$api/api/v1/namespaces/shop/configmaps")
  test "$code" = 400 || fail "truncated protobuf: $code $(cat "$work/body")"
  # A ConfigMap value that is not a string: 422 Invalid, the cause naming the key.
  code=$(curl -s -o "$work/body" -w '%{http_code}' --cacert "$work/d/ca/rootCA.crt" --cert "$work/d/certs/admin.crt" \
    --key "$work/d/certs/admin.key" -H 'Content-Type: application/json' \
    --data '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typed"},"data":{"port":8080}}' \
    "$api/api/v1/namespaces/shop/configmaps")
  test "$code" = 422 || fail "non-string ConfigMap value: $code $(cat "$work/body")"
  expect "$(cat "$work/body")" '"field": *"data\[port\]"' "the cause names the key"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\n  namespace: shop\nbogus: 1\ndata:\n  a: b\n' >"$work/strict.yaml"
  if out=$(k create --validate=strict -f "$work/strict.yaml" 2>&1); then fail "unknown field accepted: $out"; fi
  expect "$out" 'unknown field "bogus"' "strict field validation"
  cat >"$work/crd.yaml" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: red}
YAML
  k apply -f "$work/crd.yaml" >/dev/null
  for _ in $(seq 1 50); do k get gadgets -n shop >/dev/null 2>&1 && break; sleep 0.1; done
  printf 'apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: bad\n  namespace: shop\nspec:\n  size: 0\n' >"$work/bad.yaml"
  if out=$(k create -f "$work/bad.yaml" 2>&1); then fail "schema violation accepted: $out"; fi
  expect "$out" "spec.size" "schema violation reported"
  printf 'apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: good\n  namespace: shop\nspec:\n  size: 2\n' >"$work/good.yaml"
  k create -f "$work/good.yaml" >/dev/null
  test "$(k get gadget good -n shop -o jsonpath='{.spec.color}')" = red || fail "schema default"
  head -c $((3 * 1024 * 1024)) /dev/zero | tr '\0' 'x' >"$work/big.txt"
  if out=$(k create configmap big -n shop --from-file=big="$work/big.txt" 2>&1); then fail "3 MiB object accepted"; fi
  expect "$out" "too large\|Too Large\|exceeds" "3 MiB object refused"
  for n in truncated typed strict bad big; do
    if k get cm "$n" -n shop >/dev/null 2>&1 || k get gadget "$n" -n shop >/dev/null 2>&1; then fail "$n was stored"; fi
  done
  k get ns shop >/dev/null || fail "the server stopped serving"

  # delete --all, then the namespace with everything in it.
  k delete cm --all -n shop >/dev/null
  test -z "$(k get cm -n shop -o name | grep -v kube-root-ca.crt || true)" || fail "delete --all"
  # ... and the namespace's CA bundle comes back, as its controller puts it back.
  for _ in $(seq 1 50); do k get cm kube-root-ca.crt -n shop >/dev/null 2>&1 && break; sleep 0.1; done
  k get cm kube-root-ca.crt -n shop >/dev/null || fail "kube-root-ca.crt not put back"
  k delete ns shop --wait=false >/dev/null
  for _ in $(seq 1 100); do k get ns shop >/dev/null 2>&1 || break; sleep 0.1; done
  if k get ns shop >/dev/null 2>&1; then fail "namespace not deleted"; fi
  test -z "$(k get pods,svc,deploy -A -o name | grep -v 'service/kubernetes' || true)" || fail "namespace contents left"

  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "kubectl 1.$minor: every command did what it says"
done
