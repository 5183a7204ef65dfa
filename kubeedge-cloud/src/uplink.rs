//! What edges send up (node registration and status, pod status, leases, events, pod deletions,
//! queries, device twin and state reports), applied to the API server under **node authorization**: a node may read only what is
//! bound to it and write only its own Node, its own pods' status, its own Lease and events about
//! its own objects.
//!
//! Replies follow upstream cloudcore's shapes, which upstream edgecore's clients parse: writes of
//! nodes, pod status and leases, and lease queries, answer `ObjectResp` (`{"Object": <object>,
//! "Err": null}`, Go field names), and their failures `{"Object": null, "Err": {"ErrStatus":
//! <Status>}}`; other queries answer the bare object (a service account token: the
//! `TokenRequest`), and their failures the bare `{"ErrStatus": <Status>}` (the JSON of Go's
//! `*errors.StatusError`); pod deletions answer `"OK"`; `k8s/ca.crt` answers the cluster CA as
//! a PEM string. See [`ReplyShape`].

use std::sync::Arc;

use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, Preconditions,
};
use kubeedge_core::api::devices::{Twin, TwinProperty};
use kubeedge_core::api::twin::{DeviceTwinUpdate, TwinValue};
use kubeedge_core::message::{Message, Operation, ResourceType, names};
use kubeedge_core::resource::ObjectRef;
use serde_json::{Value, json};

use crate::controller::api_in;
use crate::index::{Index, Kind, bound_node, meta, version};

/// The namespace node leases live in.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Why an uplink request was not carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// Node authorization refused it (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The cloud does not handle this kind of request (405).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The API server refused or failed.
    #[error("API server")]
    Kube(#[from] kube::Error),
}

impl UplinkError {
    /// The `Status` object describing the failure.
    pub fn status(&self) -> Value {
        let (code, reason) = match self {
            UplinkError::Forbidden(_) => (403, "Forbidden"),
            UplinkError::BadRequest(_) => (400, "BadRequest"),
            UplinkError::Unsupported(_) => (405, "MethodNotAllowed"),
            UplinkError::Kube(kube::Error::Api(s)) => {
                return json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": s.message, "reason": s.reason,
                              "code": s.code});
            }
            UplinkError::Kube(_) => (500, "InternalError"),
        };
        let message = match self {
            UplinkError::Kube(e) => e.to_string(),
            other => other.to_string(),
        };
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
    }

    /// The reply content for this failure, in the request's shape.
    pub fn reply(&self, shape: ReplyShape) -> Value {
        match shape {
            ReplyShape::ObjectResp => json!({"Object": null, "Err": {"ErrStatus": self.status()}}),
            ReplyShape::Bare => json!({"ErrStatus": self.status()}),
        }
    }
}

/// How upstream cloudcore answers a kind of request, and so how upstream edgecore reads the
/// answer (`edge/pkg/metamanager/client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// `{"Object": .., "Err": ..}`: node create and status patch, pod status patch and create,
    /// lease create, update and query, CSR create.
    ObjectResp,
    /// The object itself, or `{"ErrStatus": ..}`: other queries, pod deletion.
    Bare,
}

impl ReplyShape {
    /// The shape of the answer to `op` on `kind`.
    pub fn of(kind: &ResourceType, op: &Operation) -> ReplyShape {
        match (kind, op) {
            (ResourceType::Lease, _)
            | (ResourceType::NodePatch | ResourceType::PodPatch, _)
            | (
                ResourceType::Node | ResourceType::Pod | ResourceType::CertificateSigningRequest,
                Operation::Insert | Operation::Update,
            ) => ReplyShape::ObjectResp,
            _ => ReplyShape::Bare,
        }
    }
}

fn object_resp(obj: Value) -> Value {
    json!({"Object": obj, "Err": null})
}

fn lease_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
        "leases",
    )
}

fn service_account_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "ServiceAccount"),
        "serviceaccounts",
    )
}

/// `obj` with its `apiVersion` and `kind` set (upstream's `SetMetaType`).
fn with_kind(mut obj: Value, api_version: &str, kind: &str) -> Value {
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    obj
}

fn event_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Event"), "events")
}

fn to_json(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

fn from_json(v: Value) -> Result<DynamicObject, UplinkError> {
    serde_json::from_value(v).map_err(|e| UplinkError::BadRequest(e.to_string()))
}

/// A patch carried as a JSON string (upstream) or as a JSON object.
fn patch_body(content: &Value) -> Result<Value, UplinkError> {
    match content {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| UplinkError::BadRequest(format!("patch is not JSON: {e}"))),
        Value::Object(_) => Ok(content.clone()),
        _ => Err(UplinkError::BadRequest(
            "patch must be a JSON object".into(),
        )),
    }
}

/// A patch reduced to its `status`: an edge changes status, never labels, spec or metadata. A
/// patch without a status (the kubelet's `{}` when nothing changed) changes nothing.
fn status_only(patch: Value) -> Result<Value, UplinkError> {
    match patch.get("status") {
        Some(status) if status.is_object() => Ok(json!({"status": status})),
        None | Some(Value::Null) if patch.is_object() => Ok(json!({})),
        _ => Err(UplinkError::BadRequest(
            "a status patch must be an object whose status is an object".into(),
        )),
    }
}

/// The answer to an upstream metaserver's application request (resource `null`) or watch sync
/// (`watchapp/sync`): refused, in upstream's shape (the Application back with `Status`
/// `Rejected` and the reason), since this cloud serves edges' reads through reliable sync.
fn application_refused(node: &str, msg: &Message) -> Value {
    let why = format!(
        "node {node:?}: this cloud does not serve metaserver applications (the edge's local API \
         answers from what the cloud syncs to it)"
    );
    let refuse = |app: &Value| {
        let mut app = app.clone();
        if !app.is_object() {
            app = json!({});
        }
        app["Status"] = json!("Rejected");
        app["Reason"] = json!(why);
        app["Error"] = json!({"ErrStatus": {"metadata": {}, "status": "Failure", "message": why,
                                            "reason": "MethodNotAllowed", "code": 405}});
        app
    };
    let content = match &msg.content {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    if msg.route.resource == names::WATCHAPP_SYNC_RESOURCE {
        // A map id → Application: the answer lists the ones that failed (all of them).
        let failed: serde_json::Map<String, Value> = content
            .as_object()
            .map(|apps| {
                apps.iter()
                    .map(|(id, app)| (id.clone(), refuse(app)))
                    .collect()
            })
            .unwrap_or_default();
        return Value::Object(failed);
    }
    refuse(&content)
}

/// `content[field]`, which must be an object.
fn required<'a>(content: &'a Value, field: &str) -> Result<&'a Value, UplinkError> {
    match content.get(field) {
        Some(v) if v.is_object() => Ok(v),
        _ => Err(UplinkError::BadRequest(format!(
            "{field} must be an object"
        ))),
    }
}

/// `status.twins` after a twin report: `actual` becomes `reported`, `expected` becomes
/// `observedDesired` (with the value's `timestamp` and the twin's `type` as metadata); twins of type
/// `deleted` are dropped; twins not in the report stay.
pub fn merge_twins(current: &Value, update: &DeviceTwinUpdate) -> Vec<Twin> {
    let mut twins: Vec<Twin> = serde_json::from_value(current.clone()).unwrap_or_default();
    let property = |v: &TwinValue, kind: &str| TwinProperty {
        value: v.value.clone().unwrap_or_default(),
        metadata: [
            ("timestamp".to_owned(), v.timestamp().to_string()),
            ("type".to_owned(), kind.to_owned()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty() && v != "0")
        .collect(),
    };
    for (name, twin) in &update.twin {
        twins.retain(|t| &t.property_name != name || twin.kind() != "deleted");
        if twin.kind() == "deleted" {
            continue;
        }
        let slot = match twins.iter_mut().position(|t| &t.property_name == name) {
            Some(i) => &mut twins[i],
            None => {
                twins.push(Twin {
                    property_name: name.clone(),
                    ..Twin::default()
                });
                let last = twins.len() - 1;
                &mut twins[last]
            }
        };
        if let Some(actual) = &twin.actual {
            slot.reported = Some(property(actual, twin.kind()));
        }
        if let Some(expected) = &twin.expected {
            slot.observed_desired = Some(property(expected, twin.kind()));
        }
    }
    twins
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Applies edge requests to the API server. See the module docs.
#[derive(Clone)]
pub struct Uplink {
    client: Client,
    index: Arc<Index>,
    /// The cluster's CA (PEM), the answer to `k8s/ca.crt`.
    cluster_ca: Arc<str>,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink").finish_non_exhaustive()
    }
}

impl Uplink {
    /// Uplink handling through `client`, authorizing against `index`; `cluster_ca` (PEM) is what
    /// an edge asking for `k8s/ca.crt` gets.
    pub fn new(client: Client, index: Arc<Index>, cluster_ca: &str) -> Self {
        Uplink {
            client,
            index,
            cluster_ca: cluster_ca.into(),
        }
    }

    /// Handles one message from `node` (its resource in edge form); returns the reply content, or
    /// `None` for messages that need no reply.
    pub async fn handle(&self, node: &str, msg: &Message) -> Option<Value> {
        match self.dispatch(node, msg).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::info!(node, resource = %msg.route.resource,
                    operation = %msg.route.operation, error = %e, "uplink request refused");
                let shape = msg
                    .route
                    .resource
                    .parse::<ObjectRef>()
                    .map(|r| ReplyShape::of(&r.kind, &msg.route.operation))
                    .unwrap_or(ReplyShape::ObjectResp);
                Some(e.reply(shape))
            }
        }
    }

    async fn dispatch(&self, node: &str, msg: &Message) -> Result<Option<Value>, UplinkError> {
        let op = &msg.route.operation;
        if matches!(op, Operation::Response | Operation::Error) {
            // An answer to something we sent outside reliable sync: nothing to do.
            return Ok(None);
        }
        if let Some(rest) = msg.route.resource.strip_prefix("device/") {
            return self.device_report(node, rest, &msg.content).await.map(Some);
        }
        if msg.route.resource == names::CLUSTER_CA_RESOURCE {
            return Ok(Some(Value::String(self.cluster_ca.to_string())));
        }
        if msg.route.source == names::METASERVER || *op == Operation::ApplicationRequest {
            return Ok(Some(application_refused(node, msg)));
        }
        if msg.route.resource == names::MEMBERSHIP_DETAIL_RESOURCE {
            // Upstream edges ask for their device list every minute until a twin message
            // answers the request; the list itself goes down as membership updates.
            return Ok(Some(Value::String(names::ACK_CONTENT.into())));
        }
        let target: ObjectRef = msg
            .route
            .resource
            .parse()
            .map_err(|e| UplinkError::BadRequest(format!("{e}")))?;
        if !self.index.may_be_edge(node) {
            return Err(UplinkError::Forbidden(format!(
                "node {node:?} is a node of the cluster, not an edge node"
            )));
        }
        let ns = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone().unwrap_or_default();
        let content = &msg.content;
        match (&target.kind, op) {
            (ResourceType::Node, Operation::Insert) => {
                self.own_node(node, &name)?;
                self.register_node(node, content).await.map(Some)
            }
            (ResourceType::Node, Operation::Update) => {
                self.own_node(node, &name)?;
                let status = json!({"status": required(content, "status")?});
                self.patch_node_status(node, Patch::Merge(&status))
                    .await
                    .map(Some)
            }
            (ResourceType::NodePatch, Operation::Patch | Operation::Update) => {
                self.own_node(node, &name)?;
                let patch = status_only(patch_body(content)?)?;
                self.patch_node_status(node, Patch::Strategic(&patch))
                    .await
                    .map(Some)
            }
            (ResourceType::Node, Operation::Query) => {
                self.own_node(node, &name)?;
                let api = api_in(&self.client, Kind::Node, "");
                Ok(Some(to_json(api.get(&name).await?)))
            }
            (ResourceType::NodeStatus, _) => {
                self.own_node(node, &name)?;
                let status = json!({"status": required(content, "Status")?});
                self.patch_node_status(node, Patch::Merge(&status))
                    .await
                    .map(Some)
            }
            (ResourceType::PodPatch, Operation::Patch | Operation::Update) => {
                self.own_pod(node, &ns, &name)?;
                let patch = status_only(patch_body(content)?)?;
                let api = api_in(&self.client, Kind::Pod, &ns);
                let pod = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await?;
                Ok(Some(object_resp(self.newest(Kind::Pod, to_json(pod)))))
            }
            (ResourceType::PodStatus, _) => {
                self.own_pod(node, &ns, &name)?;
                let status = json!({"status": required(content, "Status")?});
                let api = api_in(&self.client, Kind::Pod, &ns);
                let pod = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                Ok(Some(object_resp(to_json(pod))))
            }
            (ResourceType::Pod, Operation::Delete) => {
                let pod = self.own_pod(node, &ns, &name)?;
                let uid = match content {
                    Value::String(uid) if !uid.is_empty() => Some(uid.clone()),
                    other => other["preconditions"]["uid"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| Some(meta(&pod, "uid").to_owned()).filter(|u| !u.is_empty())),
                };
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: uid.map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api_in(&self.client, Kind::Pod, &ns)
                    .delete(&name, &params)
                    .await
                {
                    Ok(_) => Ok(Some(Value::String(names::ACK_CONTENT.into()))),
                    Err(e) if is_not_found(&e) => {
                        Ok(Some(Value::String(names::ACK_CONTENT.into())))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (ResourceType::Pod, Operation::Query) => {
                let pod = self.own_pod(node, &ns, &name)?;
                Ok(Some(pod))
            }
            (ResourceType::ConfigMap | ResourceType::Secret, Operation::Query) => {
                let kind = if target.kind == ResourceType::Secret {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                if !self.index.referenced_by(node, kind, &ns, &name) {
                    return Err(UplinkError::Forbidden(format!(
                        "no pod on node {node:?} references {} {ns}/{name}",
                        kind.edge_type()
                    )));
                }
                let api = api_in(&self.client, kind, &ns);
                Ok(Some(to_json(api.get(&name).await?)))
            }
            (ResourceType::Lease, Operation::Insert | Operation::Update) => {
                self.own_lease(node, &ns, &name)?;
                let lease = self.write_lease(node, content).await?;
                Ok(Some(object_resp(lease)))
            }
            (ResourceType::Lease, Operation::Query) => {
                self.own_lease(node, &ns, &name)?;
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), LEASE_NAMESPACE, &lease_resource());
                Ok(Some(object_resp(to_json(api.get(&name).await?))))
            }
            (ResourceType::ServiceAccountToken, Operation::Query) => self
                .service_account_token(node, &ns, &name, content)
                .await
                .map(Some),
            (
                ResourceType::PersistentVolume
                | ResourceType::PersistentVolumeClaim
                | ResourceType::VolumeAttachment,
                Operation::Query,
            ) => self
                .volume_query(node, &target.kind, &ns, &name)
                .await
                .map(Some),
            (ResourceType::Event, Operation::Insert | Operation::Update | Operation::Patch) => {
                let event = content.get("event").unwrap_or(content);
                self.write_event(node, &ns, event).await.map(Some)
            }
            (kind, op) => Err(UplinkError::Unsupported(format!(
                "{op} on {kind} from an edge"
            ))),
        }
    }

    /// A device's twin report (`device/<ns>/<name>/twin/edge_updated`) or state report
    /// (`device/<ns>/<name>/state/update`) into the Device's status; answers `OK`.
    async fn device_report(
        &self,
        node: &str,
        resource: &str,
        content: &Value,
    ) -> Result<Value, UplinkError> {
        let mut parts = resource.splitn(3, '/');
        let (Some(ns), Some(name), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(UplinkError::BadRequest(format!(
                "device resource {resource:?} is not <namespace>/<name>/<action>"
            )));
        };
        let device = match self.index.get(Kind::Device, ns, name) {
            Some(d) if bound_node(&d) == Some(node) => d,
            _ => {
                return Err(UplinkError::Forbidden(format!(
                    "device {ns}/{name} is not bound to node {node:?}"
                )));
            }
        };
        let body = patch_body(content)?;
        let status = match what {
            "twin/edge_updated" => {
                let update: DeviceTwinUpdate = serde_json::from_value(body)
                    .map_err(|e| UplinkError::BadRequest(format!("twin report: {e}")))?;
                json!({"twins": merge_twins(&device["status"]["twins"], &update)})
            }
            "state/update" => {
                let state = body["device"]["state"]
                    .as_str()
                    .or_else(|| body["state"].as_str())
                    .ok_or_else(|| {
                        UplinkError::BadRequest("state report without a state".into())
                    })?;
                let mut status = json!({"state": state});
                if let Some(t) = body["device"]["lastOnlineTime"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                {
                    status["lastOnlineTime"] = json!(t);
                }
                // A kubeedge-rs edge says why a device is not well (`reason`): kept as a
                // Kubernetes-style Ready condition (an upstream edge sends no reason).
                let good = matches!(state.to_ascii_lowercase().as_str(), "online" | "ok");
                let reason = body["device"]["reason"].as_str().unwrap_or("");
                if good || !reason.is_empty() {
                    let mut cond = state
                        .chars()
                        .take(1)
                        .flat_map(char::to_uppercase)
                        .collect::<String>();
                    cond.extend(state.chars().skip(1));
                    status["conditions"] = json!([{
                        "type": "Ready",
                        "status": if good { "True" } else { "False" },
                        "reason": if good { "DeviceOnline".to_owned() } else { format!("Device{cond}") },
                        "message": reason,
                        "lastTransitionTime": kubeedge_core::store::rfc3339(std::time::SystemTime::now()),
                    }]);
                }
                status
            }
            other => {
                return Err(UplinkError::Unsupported(format!("device report {other:?}")));
            }
        };
        // Upstream's Device CRD has no status subresource: status is written on the object.
        api_in(&self.client, Kind::Device, ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
        if let Err(e) = self.device_status(&device, ns, name, &status).await {
            tracing::warn!(device = %format!("{ns}/{name}"), error = %e,
                "writing the DeviceStatus (the Device's own status is written)");
        }
        Ok(Value::String(names::ACK_CONTENT.into()))
    }

    /// The same report in the device's DeviceStatus (same name, owned by the Device), where
    /// upstream's cloud (1.23 and later) and its tools keep reported twins and state; made on the
    /// first report. Best effort: a cluster without the DeviceStatus CRD still gets the Device's.
    async fn device_status(
        &self,
        device: &Value,
        ns: &str,
        name: &str,
        status: &Value,
    ) -> Result<(), UplinkError> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("devices.kubeedge.io", "v1beta1", "DeviceStatus"),
            "devicestatuses",
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        let mut status = status.clone();
        if let Some(m) = status.as_object_mut() {
            // Not in DeviceStatus' schema.
            m.remove("conditions");
        }
        let patch = json!({"status": status});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                let owner = json!({"apiVersion": device["apiVersion"], "kind": "Device",
                    "name": name, "uid": meta(device, "uid"), "controller": true,
                    "blockOwnerDeletion": true});
                let obj = json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
                    "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner]},
                    "spec": {}, "status": patch["status"]});
                api.create(&PostParams::default(), &from_json(obj)?).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A service account token for a pod on `node` (upstream's `serviceaccounttoken` query,
    /// whose content is the `TokenRequest`): allowed when the token is bound to a pod on this
    /// node running as that account, or, unbound, when some pod on this node runs as it.
    /// Answers the `TokenRequest` with its status, as upstream does.
    async fn service_account_token(
        &self,
        node: &str,
        ns: &str,
        account: &str,
        content: &Value,
    ) -> Result<Value, UplinkError> {
        let mut request = match content {
            Value::String(s) => serde_json::from_str(s)
                .map_err(|e| UplinkError::BadRequest(format!("TokenRequest is not JSON: {e}")))?,
            Value::Object(_) => content.clone(),
            _ => return Err(UplinkError::BadRequest("a TokenRequest is needed".into())),
        };
        let runs_as = |pod: &Value| {
            let sa = pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            meta(pod, "namespace") == ns && sa == account
        };
        // As Kubernetes' node authorizer: a node gets only tokens bound to a pod of its own,
        // named with its uid, running as that account.
        let bound = &request["spec"]["boundObjectRef"];
        let allowed = bound["kind"] == "Pod"
            && self
                .own_pod(node, ns, bound["name"].as_str().unwrap_or(""))
                .is_ok_and(|pod| {
                    runs_as(&pod)
                        && bound["uid"]
                            .as_str()
                            .is_some_and(|uid| !uid.is_empty() && uid == meta(&pod, "uid"))
                });
        if !allowed {
            return Err(UplinkError::Forbidden(format!(
                "node {node:?} may only get tokens bound to a pod of its own (by name and uid) running as {ns}/{account}"
            )));
        }
        request["apiVersion"] = json!("authentication.k8s.io/v1");
        request["kind"] = json!("TokenRequest");
        if !request["metadata"].is_object() {
            request["metadata"] = json!({});
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &service_account_resource());
        let answer: DynamicObject = api
            .create_subresource("token", account, &PostParams::default(), &request)
            .await?;
        let mut answer = to_json(answer);
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["kind"] = json!("TokenRequest");
        Ok(answer)
    }

    /// A PersistentVolumeClaim a pod on `node` uses, the PersistentVolume bound to one, or a
    /// VolumeAttachment to `node` (upstream's volume queries, under the node authorizer's rules).
    async fn volume_query(
        &self,
        node: &str,
        kind: &ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<Value, UplinkError> {
        let claims = |pods: &[Value]| -> Vec<(String, String)> {
            pods.iter()
                .flat_map(|p| {
                    let pns = meta(p, "namespace").to_owned();
                    p["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(move |v| {
                            v["persistentVolumeClaim"]["claimName"]
                                .as_str()
                                .map(|c| (pns.clone(), c.to_owned()))
                        })
                })
                .collect()
        };
        let (group, version, kind_name, plural, namespaced) = match kind {
            ResourceType::PersistentVolumeClaim => (
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                true,
            ),
            ResourceType::PersistentVolume => {
                ("", "v1", "PersistentVolume", "persistentvolumes", false)
            }
            _ => (
                "storage.k8s.io",
                "v1",
                "VolumeAttachment",
                "volumeattachments",
                false,
            ),
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind_name),
            plural,
        );
        let refused = || {
            UplinkError::Forbidden(format!(
                "node {node:?} has no pod that uses {} {name:?}",
                kind.as_str()
            ))
        };
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(self.client.clone(), ns, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        };
        let pods = self.index.pods_on(node);
        match kind {
            ResourceType::PersistentVolumeClaim
                if !claims(&pods).contains(&(ns.to_owned(), name.to_owned())) =>
            {
                return Err(refused());
            }
            ResourceType::PersistentVolume => {
                let pv = to_json(api.get(name).await?);
                let claim = &pv["spec"]["claimRef"];
                let key = (
                    claim["namespace"].as_str().unwrap_or("").to_owned(),
                    claim["name"].as_str().unwrap_or("").to_owned(),
                );
                if !claims(&pods).contains(&key) {
                    return Err(refused());
                }
                return Ok(with_kind(pv, "v1", kind_name));
            }
            ResourceType::VolumeAttachment => {
                let va = to_json(api.get(name).await?);
                if va["spec"]["nodeName"].as_str() != Some(node) {
                    return Err(refused());
                }
                return Ok(with_kind(va, "storage.k8s.io/v1", kind_name));
            }
            _ => {}
        }
        Ok(with_kind(to_json(api.get(name).await?), "v1", kind_name))
    }

    fn own_node(&self, node: &str, name: &str) -> Result<(), UplinkError> {
        if name == node {
            Ok(())
        } else {
            Err(UplinkError::Forbidden(format!(
                "node {node:?} may not act on node {name:?}"
            )))
        }
    }

    fn own_pod(&self, node: &str, ns: &str, name: &str) -> Result<Value, UplinkError> {
        match self.index.get(Kind::Pod, ns, name) {
            Some(pod) if bound_node(&pod) == Some(node) => Ok(pod),
            _ => Err(UplinkError::Forbidden(format!(
                "pod {ns}/{name} is not bound to node {node:?}"
            ))),
        }
    }

    fn own_lease(&self, node: &str, ns: &str, name: &str) -> Result<(), UplinkError> {
        if ns == LEASE_NAMESPACE && name == node {
            Ok(())
        } else {
            Err(UplinkError::Forbidden(format!(
                "node {node:?} may only write its own lease ({LEASE_NAMESPACE}/{node})"
            )))
        }
    }

    /// Creates the node's Node object (or returns the existing one), labelled as an edge node.
    async fn register_node(&self, node: &str, content: &Value) -> Result<Value, UplinkError> {
        let mut obj = content.clone();
        if !obj.is_object() || !obj.get("metadata").is_none_or(Value::is_object) {
            return Err(UplinkError::BadRequest("node insert without a Node".into()));
        }
        if obj.get("metadata").is_none() {
            obj["metadata"] = json!({});
        }
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Node");
        obj["metadata"]["name"] = json!(node);
        if !obj["metadata"]["labels"].is_object() {
            obj["metadata"]["labels"] = json!({});
        }
        obj["metadata"]["labels"][crate::EDGE_NODE_LABEL] = json!("");
        if let Some(m) = obj["metadata"].as_object_mut() {
            for field in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "ownerReferences",
                "finalizers",
            ] {
                m.remove(field);
            }
        }
        // Taints are the cluster's to set, not the node's.
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("taints");
        }
        let api = api_in(&self.client, Kind::Node, "");
        let created = match api.create(&PostParams::default(), &from_json(obj)?).await {
            Ok(n) => n,
            // Registered before (a restart): answer with what is there. `may_be_edge` already
            // refused a node of the cluster that is not an edge node.
            Err(kube::Error::Api(s)) if s.is_already_exists() => api.get(node).await?,
            Err(e) => return Err(e.into()),
        };
        Ok(object_resp(to_json(created)))
    }

    async fn patch_node_status(
        &self,
        node: &str,
        patch: Patch<&Value>,
    ) -> Result<Value, UplinkError> {
        let api = api_in(&self.client, Kind::Node, "");
        let n = api
            .patch_status(node, &PatchParams::default(), &patch)
            .await?;
        Ok(object_resp(self.newest(Kind::Node, to_json(n))))
    }

    /// `written`, or the index's copy of it if that is newer. Upstream edges store the object
    /// of a write's answer as their copy, and the answer can leave after a newer version of the
    /// object went down (a controller reacting to the write at once): the edge would go back to
    /// the older one and keep it.
    fn newest(&self, kind: Kind, written: Value) -> Value {
        let indexed = self
            .index
            .get(kind, meta(&written, "namespace"), meta(&written, "name"));
        match indexed {
            Some(obj) if version(&obj) > version(&written) => obj,
            _ => written,
        }
    }

    async fn write_lease(&self, node: &str, content: &Value) -> Result<Value, UplinkError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), LEASE_NAMESPACE, &lease_resource());
        let spec = json!({"spec": required(content, "spec")?});
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&spec))
            .await
        {
            Ok(l) => Ok(to_json(l)),
            Err(e) if is_not_found(&e) => {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
                    "spec": content["spec"]});
                Ok(to_json(
                    api.create(&PostParams::default(), &from_json(lease)?)
                        .await?,
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn write_event(&self, node: &str, ns: &str, event: &Value) -> Result<Value, UplinkError> {
        let involved = &event["involvedObject"];
        let about = involved["name"].as_str().unwrap_or("");
        let allowed = match involved["kind"].as_str().unwrap_or("") {
            "Node" => about == node,
            "Pod" => {
                let pns = involved["namespace"].as_str().unwrap_or(ns);
                self.own_pod(node, pns, about).is_ok()
            }
            _ => false,
        };
        if !allowed {
            return Err(UplinkError::Forbidden(format!(
                "node {node:?} may only report events about itself and its pods"
            )));
        }
        if !event.get("metadata").is_some_and(Value::is_object) {
            return Err(UplinkError::BadRequest("an event needs metadata".into()));
        }
        let mut event = event.clone();
        event["apiVersion"] = json!("v1");
        event["kind"] = json!("Event");
        event["metadata"]["namespace"] = json!(ns);
        if let Some(m) = event["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let name = meta(&event, "name").to_owned();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &event_resource());
        let obj = from_json(event)?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(e) => Ok(to_json(e)),
            Err(kube::Error::Api(s)) if s.is_already_exists() && !name.is_empty() => {
                let body = serde_json::to_value(&obj).unwrap_or(Value::Null);
                Ok(to_json(
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                        .await?,
                ))
            }
            Err(e) => Err(e.into()),
        }
    }
}
