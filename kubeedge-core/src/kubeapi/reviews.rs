//! Resources that answer instead of storing: TokenReview, SubjectAccessReview and its local and
//! self forms, SelfSubjectRulesReview, SelfSubjectReview; and TokenRequest
//! (`serviceaccounts/<name>/token`).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::{self, Attributes, User};
use super::{Api, ApiError, Target, json_response, name, ns, parse_body, store_error};

fn user_info(u: &User) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if let Some(uid) = &u.uid {
        v["uid"] = json!(uid);
    }
    v
}

fn attributes_of(spec: &Value, namespace_override: Option<&str>) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        Attributes {
            verb: s("verb"),
            resource_request: true,
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: namespace_override.map_or_else(|| s("namespace"), str::to_owned),
            name: s("name"),
            path: String::new(),
        }
    } else {
        let n = &spec["nonResourceAttributes"];
        Attributes {
            verb: n["verb"].as_str().unwrap_or_default().to_owned(),
            resource_request: false,
            path: n["path"].as_str().unwrap_or_default().to_owned(),
            ..Attributes::default()
        }
    }
}

/// POST on a review resource.
pub(crate) fn create(api: &Api, t: &Target, body: Bytes) -> Result<Response, ApiError> {
    let mut review = parse_body(&body)?;
    review["apiVersion"] = json!(t.resource.api_version());
    review["kind"] = json!(t.resource.kind);
    let me = t.user.clone();
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match t.resource.kind.as_str() {
        "TokenReview" => {
            let token = spec["token"].as_str().unwrap_or_default();
            match api.tokens.as_ref().map(|i| i.verify(&api.store, token)) {
                Some(Ok((user, audiences))) => {
                    let wanted: Vec<String> = auth::string_list(&spec["audiences"]);
                    let matched: Vec<&String> = if wanted.is_empty() {
                        audiences.iter().collect()
                    } else {
                        wanted.iter().filter(|w| audiences.contains(w)).collect()
                    };
                    if matched.is_empty() {
                        json!({"authenticated": false, "error": "token audiences do not match"})
                    } else {
                        json!({"authenticated": true, "user": user_info(&user), "audiences": matched})
                    }
                }
                Some(Err(e)) => json!({"authenticated": false, "error": e}),
                None => json!({"authenticated": false, "error": "this API issues no tokens"}),
            }
        }
        "SelfSubjectReview" => {
            let me = me.unwrap_or(User {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
                uid: None,
            });
            json!({"userInfo": user_info(&me)})
        }
        "SelfSubjectAccessReview" => {
            let a = attributes_of(&spec, None);
            // Allowed when the API is served without authorization (the edge's metaserver).
            let ok = t.allowed(api, &a);
            json!({"allowed": ok, "reason": if ok { "allowed by RBAC" } else { "" }})
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            if t.resource.kind == "LocalSubjectAccessReview"
                && spec
                    .pointer("/resourceAttributes/namespace")
                    .and_then(Value::as_str)
                    .is_some_and(|n| Some(n) != ns(t))
            {
                return Err(ApiError::bad_request(
                    "spec.resourceAttributes.namespace must match the namespace of the request",
                ));
            }
            let subject = User {
                name: spec["user"].as_str().unwrap_or_default().to_owned(),
                groups: auth::string_list(&spec["groups"]),
                uid: spec["uid"].as_str().map(str::to_owned),
            };
            let a = attributes_of(&spec, ns(t));
            let ok = auth::authorize(&api.store, &subject, &a);
            json!({"allowed": ok})
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            let rules = match &me {
                Some(u) if u.is_master() => vec![
                    json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                    json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
                ],
                Some(u) => auth::rules_for(&api.store, u, Some(namespace)),
                None => vec![json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})],
            };
            let (resource, non_resource): (Vec<Value>, Vec<Value>) = rules
                .into_iter()
                .partition(|r| r.get("nonResourceURLs").is_none());
            json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
        }
        other => return Err(ApiError::not_found("review", other)),
    };
    review["status"] = status;
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    Ok(json_response(StatusCode::CREATED, &review))
}

/// POST `serviceaccounts/<name>/token`: a bound token for the ServiceAccount.
pub(crate) fn token_request(api: &Api, t: &Target, body: Bytes) -> Result<Response, ApiError> {
    let Some(issuer) = &api.tokens else {
        return Err(ApiError::with(404, "NotFound", "this API issues no tokens"));
    };
    let mut request = if body.is_empty() {
        json!({})
    } else {
        parse_body(&body)?
    };
    if request.get("spec").is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request("spec must be an object"));
    }
    let sa = api
        .store
        .get("serviceaccounts", ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::with(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io {:?} is invalid: spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes",
                name(t)
            ),
        ));
    }
    let seconds = seconds.min(86_400 * 365);
    let mut audiences = auth::string_list(&spec["audiences"]);
    if audiences.is_empty() {
        audiences.push(auth::DEFAULT_AUDIENCE.to_owned());
    }
    let pod = match spec.pointer("/boundObjectRef") {
        Some(r) if r["kind"] == "Pod" => {
            let pod_name = r["name"].as_str().unwrap_or_default();
            let pod = api
                .store
                .get("pods", ns(t), pod_name)
                .map_err(|_| ApiError::not_found("pods", pod_name))?;
            if r["uid"]
                .as_str()
                .is_some_and(|u| pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(u))
            {
                return Err(ApiError::with(
                    409,
                    "Conflict",
                    format!("the UID in the bound object reference does not match pod {pod_name}"),
                ));
            }
            Some(pod)
        }
        Some(r) if !r.is_null() => {
            return Err(ApiError::bad_request("tokens may be bound to pods only"));
        }
        _ => None,
    };
    let (token, exp) = issuer.issue(&sa, &audiences, seconds, pod.as_ref());
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name(t), "namespace": ns(t),
        "creationTimestamp": crate::store::rfc3339(std::time::SystemTime::now())});
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(seconds);
    let exp_time =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(exp).unwrap_or(0));
    request["status"] =
        json!({"token": token, "expirationTimestamp": crate::store::rfc3339(exp_time)});
    Ok(json_response(StatusCode::CREATED, &request))
}
