//! In-process access to the API: the write path a request takes (defaults, validation, Service
//! addresses, finalizers, graceful pod deletion, managed fields) without HTTP, for controllers
//! that run beside the store (the embedded control plane's workload controllers and scheduler).
//! Calls are blocking store transactions: run them off the async workers.

use std::sync::Arc;

use serde_json::{Value, json};

use super::registry::{self, Resource};
use super::{
    Api, ApiError, FieldValidation, Ownership, Target, create_object, delete_object, store_error,
    write,
};

/// A resource of the API, by group and plural (`("apps", "deployments")`, `("", "pods")`).
pub type Kind<'a> = (&'a str, &'a str);

/// The API as one field manager sees it, in process (see the module docs).
#[derive(Clone, Debug)]
pub struct Local {
    api: Api,
    manager: Arc<str>,
    builtins: Arc<Vec<Resource>>,
}

impl Api {
    /// In-process access to this API, writing as field manager `manager` with no authorization
    /// check (the caller is the control plane itself).
    pub fn local(&self, manager: &str) -> Local {
        Local {
            api: self.clone(),
            manager: Arc::from(manager),
            builtins: Arc::new(registry::builtins()),
        }
    }
}

impl Local {
    /// The API behind this handle.
    pub fn api(&self) -> &Api {
        &self.api
    }

    fn resource(&self, (group, plural): Kind<'_>) -> Result<Resource, ApiError> {
        let found = |r: &Resource| r.group == group && r.plural == plural && !r.create_only;
        self.builtins
            .iter()
            .find(|r| found(r))
            .cloned()
            .or_else(|| {
                registry::all(&self.api.store)
                    .into_iter()
                    .find(|r| found(r))
            })
            .ok_or_else(|| {
                ApiError::with(
                    404,
                    "NotFound",
                    format!("the server does not serve {plural}.{group}"),
                )
            })
    }

    fn target(
        &self,
        kind: Kind<'_>,
        namespace: Option<&str>,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Result<Target, ApiError> {
        let resource = self.resource(kind)?;
        Ok(Target {
            namespace: if resource.namespaced {
                namespace.map(str::to_owned)
            } else {
                None
            },
            resource,
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
            dry_run: false,
            manager: self.manager.to_string(),
            field_validation: FieldValidation::Ignore,
            warnings: std::sync::Mutex::new(Vec::new()),
            user: None,
        })
    }

    /// One object.
    pub fn get(
        &self,
        kind: Kind<'_>,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let r = self.resource(kind)?;
        let ns = if r.namespaced { namespace } else { None };
        self.api
            .store
            .get(&r.store_name(), ns, name)
            .map_err(|e| store_error(&r, e))
    }

    /// Every object of `kind` in `namespace` (all namespaces for `None`).
    pub fn list(&self, kind: Kind<'_>, namespace: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let r = self.resource(kind)?;
        self.api
            .store
            .list_all(&r.store_name(), namespace)
            .map_err(|e| store_error(&r, e))
    }

    /// Creates `obj` in `namespace`, as a `POST` would.
    pub fn create(
        &self,
        kind: Kind<'_>,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let t = self.target(kind, namespace, None, None)?;
        create_object(&self.api, &t, obj)
    }

    /// Replaces the object `obj` names (its `metadata.resourceVersion`, if given, must be the
    /// stored one), as a `PUT` would; `status` writes only the status.
    pub fn update(&self, kind: Kind<'_>, obj: Value, status: bool) -> Result<Value, ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::with(422, "Invalid", "metadata.name is required"))?
            .to_owned();
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let sub = status.then_some("status");
        let t = self.target(kind, namespace.as_deref(), Some(&name), sub)?;
        write(&self.api, &t, obj, Ownership::Update(sub))
    }

    /// Binds a pod to `node` in one write, as the `pods/binding` subresource does: sets
    /// `spec.nodeName` and the `PodScheduled=True` condition (at `now`, RFC 3339). A pod already
    /// bound, or changed since `resource_version`, is a 409.
    pub fn bind(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        node: &str,
        now: &str,
    ) -> Result<Value, ApiError> {
        let r = self.resource(("", "pods"))?;
        let mut pod = self.get(("", "pods"), Some(namespace), name)?;
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::with(
                409,
                "Conflict",
                format!("pod {name} is already assigned to a node"),
            ));
        }
        if pod
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(resource_version)
        {
            return Err(ApiError::with(
                409,
                "Conflict",
                format!("pod {name} changed"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        if !pod["status"].is_object() {
            pod["status"] = json!({});
        }
        let mut conditions: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions.push(
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                               "lastTransitionTime": now}),
        );
        pod["status"]["conditions"] = Value::Array(conditions);
        self.api
            .store
            .update(&r.store_name(), Some(namespace), name, pod)
            .map_err(|e| store_error(&r, e))
    }

    /// Creates new objects of `kind` in one transaction (one disk sync), as they are given: no
    /// defaults, validation or admission. For the control plane's own records (Events); an object
    /// whose name is taken replaces the old one.
    pub fn create_unchecked(&self, kind: Kind<'_>, objects: Vec<Value>) -> Result<(), ApiError> {
        if objects.is_empty() {
            return Ok(());
        }
        let r = self.resource(kind)?;
        let ops = objects
            .into_iter()
            .map(|mut object| {
                object["apiVersion"] = json!(r.api_version());
                object["kind"] = json!(r.kind);
                crate::store::BatchOp::Put {
                    resource: r.store_name(),
                    namespace: object
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .filter(|_| r.namespaced)
                        .map(str::to_owned),
                    object,
                }
            })
            .collect();
        self.api
            .store
            .batch(ops)
            .map(|_| ())
            .map_err(|e| store_error(&r, e))
    }

    /// Deletes an object as a `DELETE` with these `DeleteOptions` would (`{}` for the defaults;
    /// `{"propagationPolicy": "Foreground"}`, `{"gracePeriodSeconds": 0}`, preconditions): the
    /// object as removed, or as marked for a graceful or finalized deletion.
    pub fn delete(
        &self,
        kind: Kind<'_>,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let t = self.target(kind, namespace, Some(name), None)?;
        let current = self.get(kind, namespace, name)?;
        let options = if options.is_object() {
            options.clone()
        } else {
            json!({})
        };
        delete_object(&self.api, &t, current, &options).map(|(_, v)| v)
    }
}
