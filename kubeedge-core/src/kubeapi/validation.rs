//! Validation of written objects, as the apiserver does it before storing anything.
//!
//! * Every object: its name (a DNS subdomain; a DNS label for Namespaces, DNS-1035 for Services;
//!   a path segment for RBAC objects and CSRs), label keys and values, annotation keys and total
//!   size, the stored size.
//! * Pods: containers present, with unique DNS-label names and an image; the restart policy; ports.
//! * ConfigMaps and Secrets: keys, string values, base64 `data`.
//! * Custom resources: the CRD's structural schema (`openAPIV3Schema`): types, `required`,
//!   `enum`, bounds, lengths, item counts, `nullable`, `x-kubernetes-int-or-string`; `default`s
//!   filled in; fields the schema does not know pruned, unless it preserves them
//!   (`x-kubernetes-preserve-unknown-fields`, `additionalProperties`).
//! * Unknown fields ([`unknown_fields`]) for `fieldValidation=Strict|Warn`: built-in kinds are
//!   checked against Kubernetes' own type descriptors, custom resources against their schema.

use serde_json::{Map, Value};

use super::ApiError;
use super::registry::Resource;

/// The largest object stored (etcd's default request limit, which the apiserver inherits).
pub const MAX_OBJECT_BYTES: usize = 1_572_864;
/// The largest total size of an object's annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn invalid(r: &Resource, obj: &Value, causes: Vec<String>) -> ApiError {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Each cause reads "<field>: <what>"; the Status names them one by one.
    let details: Vec<Value> = causes
        .iter()
        .map(|c| {
            let (field, what) = c.split_once(": ").unwrap_or(("", c.as_str()));
            let reason = if what.starts_with("Required value") {
                "FieldValueRequired"
            } else if what.starts_with("Unsupported value") {
                "FieldValueNotSupported"
            } else if what.starts_with("Too long") {
                "FieldValueTooLong"
            } else if what.starts_with("Duplicate value") {
                "FieldValueDuplicate"
            } else if what.starts_with("Too many") {
                "FieldValueTooMany"
            } else {
                "FieldValueInvalid"
            };
            serde_json::json!({"reason": reason, "message": what, "field": field})
        })
        .collect();
    ApiError::with(
        422,
        "Invalid",
        format!("{} {name:?} is invalid: {}", r.kind, causes.join(", ")),
    )
    .with_details(
        serde_json::json!({"name": name, "kind": r.kind, "group": r.group, "causes": details}),
    )
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|part| is_dns_label(part, 63))
}

/// A label value (or the name part of a qualified name when `!empty_ok`).
fn is_label_value(s: &str, empty_ok: bool) -> bool {
    if s.is_empty() {
        return empty_ok;
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    s.len() <= 63
        && s.bytes()
            .all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
}

/// `[prefix/]name`, as label and annotation keys are.
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_value(name, false),
        None => is_label_value(key, false),
    }
}

/// A ConfigMap or Secret key.
fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The rule `r`'s object names follow, as the apiserver's validation of each kind has it.
fn name_problem(r: &Resource, name: &str) -> Option<&'static str> {
    let ok = match (r.group.as_str(), r.plural.as_str()) {
        // Path segments: anything but `/`, `%`, `.` and `..` ("system:aggregate-to-edit").
        ("rbac.authorization.k8s.io", _) | ("certificates.k8s.io", _) => {
            return (name.contains('/') || name.contains('%') || name == "." || name == "..")
                .then_some("may not contain '/' or '%', nor be '.' or '..'");
        }
        ("", "namespaces") => is_dns_label(name, 63),
        // DNS-1035: a service name becomes a DNS label and an environment variable prefix.
        ("", "services") => {
            is_dns_label(name, 63) && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        }
        _ => is_dns_subdomain(name),
    };
    if ok {
        return None;
    }
    Some(match (r.group.as_str(), r.plural.as_str()) {
        ("", "namespaces") => {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63)"
        }
        ("", "services") => {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (at most 63)"
        }
        _ => {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 253)"
        }
    })
}

/// The basics of a pod spec: containers with unique DNS-label names and an image, a known restart
/// policy, ports in range.
fn pod_spec(spec: &Value, at: &str, causes: &mut Vec<String>) {
    let mut names = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        let containers = spec[list].as_array().map(Vec::as_slice).unwrap_or_default();
        if list == "containers" && containers.is_empty() {
            causes.push(format!("{at}.containers: Required value"));
        }
        for (i, c) in containers.iter().enumerate() {
            let here = format!("{at}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(format!("{here}.name: Required value")),
                Some(n) if !is_dns_label(n, 63) => causes.push(format!("{here}.name: Invalid value: {n:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")),
                Some(n) if !names.insert(n.to_owned()) => {
                    causes.push(format!("{here}.name: Duplicate value: {n:?}"))
                }
                Some(_) => {}
            }
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                causes.push(format!("{here}.image: Required value"));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let port = p["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(format!("{here}.ports[{j}].containerPort: Invalid value: {port}: must be between 1 and 65535, inclusive"));
                }
            }
        }
    }
    match spec["restartPolicy"].as_str() {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some(other) => causes.push(format!("{at}.restartPolicy: Unsupported value: {other:?}: supported values: \"Always\", \"OnFailure\", \"Never\"")),
    }
}

/// Checks `obj` (defaults applied) before it is stored as `r`.
pub fn check(r: &Resource, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && let Some(problem) = name_problem(r, name)
    {
        causes.push(format!("metadata.name: Invalid value: {name:?}: {problem}"));
    }
    if r.group.is_empty() && r.plural == "pods" && obj["spec"].is_object() {
        pod_spec(&obj["spec"], "spec", &mut causes);
    }
    match obj.pointer("/metadata/labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                if !is_qualified_name(k) {
                    causes.push(format!("metadata.labels: Invalid value: {k:?}: a label key must be a qualified name ([prefix/]name, alphanumerics, '-', '_' or '.', at most 63 characters)"));
                }
                match v.as_str() {
                    Some(s) if is_label_value(s, true) => {}
                    Some(s) => causes.push(format!("metadata.labels: Invalid value: {s:?}: a label value must be 63 characters or less, alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric")),
                    None => causes.push(format!("metadata.labels.{k}: Invalid value: label values must be strings")),
                }
            }
        }
        Some(_) => causes.push("metadata.labels: must be an object of strings".into()),
    }
    match obj.pointer("/metadata/annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(annotations)) => {
            let mut total = 0;
            for (k, v) in annotations {
                if !is_qualified_name(k) {
                    causes.push(format!("metadata.annotations: Invalid value: {k:?}: an annotation key must be a qualified name"));
                }
                match v.as_str() {
                    Some(s) => total += k.len() + s.len(),
                    None => causes.push(format!(
                        "metadata.annotations.{k}: Invalid value: annotation values must be strings"
                    )),
                }
            }
            if total > MAX_ANNOTATIONS_BYTES {
                causes.push(format!("metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"));
            }
        }
        Some(_) => causes.push("metadata.annotations: must be an object of strings".into()),
    }
    if r.group.is_empty() && (r.plural == "configmaps" || r.plural == "secrets") {
        config_data(r, obj, &mut causes);
    }
    workload(r, obj, &mut causes);
    if r.group == "certificates.k8s.io" && r.plural == "certificatesigningrequests" {
        csr(obj, &mut causes);
    }
    if !causes.is_empty() {
        return Err(invalid(r, obj, causes));
    }
    let size = serde_json::to_vec(obj).map(|b| b.len()).unwrap_or(0);
    if size > MAX_OBJECT_BYTES {
        return Err(ApiError::with(
            413,
            "RequestEntityTooLarge",
            format!(
                "{} is {size} bytes; objects are limited to {MAX_OBJECT_BYTES} bytes",
                r.kind
            ),
        ));
    }
    Ok(())
}

/// Workloads (apps/v1, batch/v1): counts not negative, a selector that selects the template's
/// labels (apps/v1 requires one), a valid pod template with a restart policy the kind allows.
fn workload(r: &Resource, obj: &Value, causes: &mut Vec<String>) {
    let (template_at, restart): (&str, &[&str]) = match (r.group.as_str(), r.plural.as_str()) {
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            ("/spec/template", &["Always"])
        }
        ("batch", "jobs") => ("/spec/template", &["OnFailure", "Never"]),
        ("batch", "cronjobs") => ("/spec/jobTemplate/spec/template", &["OnFailure", "Never"]),
        _ => return,
    };
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        causes.push("spec: Required value".into());
        return;
    };
    let counts: &[&str] = if r.group == "batch" {
        &[
            "parallelism",
            "completions",
            "backoffLimit",
            "activeDeadlineSeconds",
            "ttlSecondsAfterFinished",
        ]
    } else {
        &[
            "replicas",
            "minReadySeconds",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ]
    };
    let job_spec = if r.plural == "cronjobs" {
        &spec["jobTemplate"]["spec"]
    } else {
        spec
    };
    let prefix = if r.plural == "cronjobs" {
        "spec.jobTemplate.spec"
    } else {
        "spec"
    };
    for field in counts {
        if let Some(n) = job_spec[*field].as_i64()
            && n < 0
        {
            causes.push(format!(
                "{prefix}.{field}: Invalid value: {n}: must be greater than or equal to 0"
            ));
        }
    }
    if r.plural == "cronjobs" {
        match spec["schedule"].as_str() {
            None | Some("") => causes.push("spec.schedule: Required value".into()),
            Some(text) => {
                if let Err(why) = super::cron::Schedule::parse(text) {
                    causes.push(format!("spec.schedule: Invalid value: {text:?}: {why}"));
                }
            }
        }
    }
    let template_path = template_at.trim_start_matches('/').replace('/', ".");
    let Some(template) = obj.pointer(template_at).filter(|t| t.is_object()) else {
        causes.push(format!("{template_path}: Required value"));
        return;
    };
    let selector = if r.plural == "cronjobs" {
        &job_spec["selector"]
    } else {
        &spec["selector"]
    };
    let labels = &template["metadata"]["labels"];
    if r.group == "apps" || !selector.is_null() {
        let text = crate::store::selector::selector_text(selector);
        if selector.is_null() {
            causes.push(format!("{prefix}.selector: Required value"));
        } else if text.is_empty() {
            causes.push(format!(
                "{prefix}.selector: Invalid value: {selector}: empty selector is invalid for {}",
                r.singular
            ));
        } else {
            match crate::store::selector::LabelSelector::parse(&text) {
                Ok(sel) if sel.matches(template) => {}
                Ok(_) => causes.push(format!(
                    "{template_path}.metadata.labels: Invalid value: {labels}: `selector` does not match template `labels`"
                )),
                Err(e) => causes.push(format!("{prefix}.selector: Invalid value: {e}")),
            }
        }
    }
    if template["spec"].is_object() {
        let at = format!("{template_path}.spec");
        pod_spec(&template["spec"], &at, causes);
        if let Some(p) = template["spec"]["restartPolicy"].as_str()
            && !restart.contains(&p)
        {
            let valid: Vec<String> = restart.iter().map(|v| format!("{v:?}")).collect();
            causes.push(format!(
                "{at}.restartPolicy: Unsupported value: {p:?}: supported values: {}",
                valid.join(", ")
            ));
        }
    } else {
        causes.push(format!("{template_path}.spec: Required value"));
    }
}

fn csr(obj: &Value, causes: &mut Vec<String>) {
    use base64::Engine as _;
    let pem = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .and_then(|b| String::from_utf8(b).ok());
    if !pem.is_some_and(|p| p.contains("-----BEGIN CERTIFICATE REQUEST-----")) {
        causes.push("spec.request: Invalid value: must be a base64 PEM CERTIFICATE REQUEST".into());
    }
    if obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .is_none_or(|s| {
            s.split_once('/')
                .is_none_or(|(d, n)| d.is_empty() || n.is_empty())
        })
    {
        causes.push("spec.signerName: Required value: a signer name such as kubernetes.io/kube-apiserver-client".into());
    }
    if obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push("spec.usages: Required value".into());
    }
}

fn config_data(r: &Resource, obj: &Value, causes: &mut Vec<String>) {
    use base64::Engine as _;
    let mut seen = std::collections::HashSet::new();
    for field in ["data", "binaryData"] {
        let Some(v) = obj.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(map) = v.as_object() else {
            causes.push(format!("{field}: must be an object"));
            continue;
        };
        let base64 = r.plural == "secrets" || field == "binaryData";
        for (k, v) in map {
            // Kubernetes' field path of a map key (`data[port]`); quoted when the key itself is
            // not valid, so that the path stays one token.
            let at = if is_config_key(k) {
                format!("{field}[{k}]")
            } else {
                format!("{field}[{k:?}]")
            };
            if !is_config_key(k) {
                causes.push(format!("{at}: Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
            }
            if !seen.insert(k.clone()) {
                causes.push(format!(
                    "{at}: Invalid value: duplicate of key {k:?} in data"
                ));
            }
            match v.as_str() {
                Some(s) if base64 => {
                    if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
                        causes.push(format!("{at}: Invalid value: not base64"));
                    }
                }
                Some(_) => {}
                None => causes.push(format!("{at}: Invalid value: {v}: values must be strings")),
            }
        }
    }
}

// === unknown fields ===

/// The fields of `obj` that its kind does not have (JSON paths such as `spec.foo`): built-in
/// kinds by Kubernetes' type descriptors, custom resources by their schema. `None` when the kind
/// has no schema to check against.
pub fn unknown_fields(r: &Resource, obj: &Value) -> Option<Vec<String>> {
    if let Some(schema) = &r.schema {
        let mut out = Vec::new();
        schema_unknown(schema, obj, "", &mut out, true);
        return Some(out);
    }
    super::protobuf::unknown_fields(obj)
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

fn schema_unknown(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>, root: bool) {
    if preserves(schema) && schema.get("properties").is_none() {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, child) in map {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => schema_unknown(s, child, &sub, out, false),
                    (None, Some(a)) if a.is_object() => schema_unknown(a, child, &sub, out, false),
                    (None, Some(Value::Bool(true))) => {}
                    (None, _) if preserves(schema) => {}
                    (None, _) => out.push(sub),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    schema_unknown(item_schema, item, &format!("{path}[{i}]"), out, false);
                }
            }
        }
        _ => {}
    }
}

// === custom resources: structural schemas ===

/// Validates a custom resource against its version's `openAPIV3Schema`, filling in `default`s and
/// pruning fields the schema does not declare. The object is changed in place.
pub fn custom_resource(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let Some(schema) = &r.schema else {
        return Ok(());
    };
    let mut causes = Vec::new();
    walk(schema, obj, "", &mut causes, true);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(r, obj, causes))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, v: &mut Value, path: &str, causes: &mut Vec<String>, root: bool) {
    let at = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema["nullable"] != true && !root {
            causes.push(format!(
                "{at}: Invalid value: \"null\": {at} in body must be of type {}",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if let Some(want) = schema["type"].as_str() {
        let got = type_name(v);
        let ok = got == want || (want == "number" && got == "integer");
        if !(ok || int_or_string && matches!(got, "integer" | "string")) {
            causes.push(format!(
                "{at}: Invalid value: \"{got}\": {at} in body must be of type {want}: \"{got}\""
            ));
            return;
        }
    } else if int_or_string && !matches!(type_name(v), "integer" | "string") {
        causes.push(format!(
            "{at}: Invalid value: must be an integer or a string"
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push(format!(
            "{at}: Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && (n < min || (schema["exclusiveMinimum"] == true && n <= min))
        {
            causes.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be greater than or equal to {min}"
            ));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && (n > max || (schema["exclusiveMaximum"] == true && n >= max))
        {
            causes.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be less than or equal to {max}"
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            causes.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be at least {} chars long",
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            causes.push(format!(
                "{at}: Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
    }
    match v {
        Value::Object(map) => object(schema, map, path, causes, root),
        Value::Array(items) => {
            let n = items.len() as u64;
            if schema["minItems"].as_u64().is_some_and(|m| n < m) {
                causes.push(format!(
                    "{at}: Invalid value: {at} in body should have at least {} items",
                    schema["minItems"]
                ));
            }
            if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
                causes.push(format!(
                    "{at}: Too many: {n}: must have at most {} items",
                    schema["maxItems"]
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), causes, false);
                }
            }
        }
        _ => {}
    }
}

fn object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    causes: &mut Vec<String>,
    root: bool,
) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    let props = schema.get("properties").and_then(Value::as_object);
    // Defaults first, so that required fields with a default are satisfied.
    if let Some(props) = props {
        for (k, s) in props {
            if let Some(d) = s.get("default")
                && map.get(k).is_none_or(Value::is_null)
                && !(root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            {
                map.insert(k.clone(), d.clone());
            }
        }
    }
    if let Some(required) = schema["required"].as_array() {
        for k in required.iter().filter_map(Value::as_str) {
            if map.get(k).is_none_or(Value::is_null) {
                causes.push(format!("{}: Required value", join(k)));
            }
        }
    }
    let additional = schema.get("additionalProperties");
    let keep_unknown = preserves(schema) || additional == Some(&Value::Bool(true));
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_schema = props
            .and_then(|p| p.get(&k))
            .or(additional.filter(|a| a.is_object()));
        match child_schema {
            Some(s) => {
                if let Some(child) = map.get_mut(&k) {
                    walk(s, child, &join(&k), causes, false);
                }
            }
            // Pruned: the schema does not have it.
            None if !keep_unknown => {
                map.remove(&k);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::registry::builtins;
    use serde_json::json;

    fn cm() -> Resource {
        builtins()
            .into_iter()
            .find(|r| r.plural == "configmaps")
            .unwrap()
    }

    fn resource(group: &str, plural: &str, kind: &str) -> Resource {
        let mut r = cm();
        r.group = group.into();
        r.plural = plural.into();
        r.kind = kind.into();
        r
    }

    #[test]
    fn names_follow_their_kind_and_pods_their_basics() {
        let named = |n: &str| json!({"metadata": {"name": n}});
        assert!(check(&cm(), &named("a.b-c")).is_ok());
        assert!(check(&cm(), &named("Bad_Name")).is_err());
        let svc = resource("", "services", "Service");
        assert!(check(&svc, &named("web")).is_ok());
        let e = check(&svc, &named("1web")).unwrap_err();
        assert_eq!(e.status()["details"]["causes"][0]["field"], "metadata.name");
        let ns = resource("", "namespaces", "Namespace");
        assert!(check(&ns, &named("a.b")).is_err());
        let role = resource("rbac.authorization.k8s.io", "clusterroles", "ClusterRole");
        assert!(check(&role, &named("system:aggregate-to-edit")).is_ok());
        assert!(check(&role, &named("a/b")).is_err());

        let pods = resource("", "pods", "Pod");
        let pod = |spec: Value| json!({"metadata": {"name": "p"}, "spec": spec});
        assert!(
            check(&pods, &pod(json!({"containers": [{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}]}]})))
                .is_ok()
        );
        let e = check(
            &pods,
            &pod(json!({"restartPolicy": "Sometimes", "containers": [
                {"name": "a", "image": "x"}, {"name": "a"}, {"name": "B", "image": "y",
                 "ports": [{"containerPort": 70000}]}]})),
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        let fields: Vec<(String, String)> = e.status()["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("spec.containers[1].name", "FieldValueDuplicate"),
            ("spec.containers[1].image", "FieldValueRequired"),
            ("spec.containers[2].name", "FieldValueInvalid"),
            (
                "spec.containers[2].ports[0].containerPort",
                "FieldValueInvalid",
            ),
            ("spec.restartPolicy", "FieldValueNotSupported"),
        ];
        assert_eq!(
            fields,
            expected.map(|(f, r)| (f.to_owned(), r.to_owned())).to_vec()
        );
        assert!(check(&pods, &pod(json!({"containers": []}))).is_err());
    }

    #[test]
    fn labels_and_config_data_are_checked() {
        let ok = json!({"metadata": {"name": "c", "labels": {"app.kubernetes.io/name": "web", "x": ""}}, "data": {"a.b": "1"}});
        assert!(check(&cm(), &ok).is_ok());
        for bad in [
            json!({"metadata": {"name": "c", "labels": {"a b": "x"}}}),
            json!({"metadata": {"name": "c", "labels": {"a": "-x"}}}),
            json!({"metadata": {"name": "c"}, "data": {"k": 5}}),
            json!({"metadata": {"name": "c"}, "data": {"a/b": "x"}}),
        ] {
            let e = check(&cm(), &bad).unwrap_err();
            assert_eq!(e.code, 422, "{bad}");
            assert!(e.details.is_some(), "{bad}");
        }
        let e = check(&cm(), &json!({"metadata": {"name": "c"}, "data": {"k": 5}})).unwrap_err();
        let causes = &e.status()["details"]["causes"];
        assert_eq!(causes[0]["field"], "data[k]");
        assert_eq!(causes[0]["reason"], "FieldValueInvalid");
        let big = json!({"metadata": {"name": "c"}, "data": {"k": "x".repeat(MAX_OBJECT_BYTES)}});
        assert_eq!(check(&cm(), &big).unwrap_err().code, 413);
    }

    #[test]
    fn custom_resources_follow_their_schema() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut r = cm();
        r.schema = Some(schema);
        let mut obj = json!({"apiVersion": "x/v1", "kind": "T", "metadata": {"name": "t"},
                             "spec": {"size": 3, "junk": 1, "extra": {"anything": [1]}}});
        assert_eq!(unknown_fields(&r, &obj), Some(vec!["spec.junk".to_owned()]));
        custom_resource(&r, &mut obj).unwrap();
        assert_eq!(
            obj["spec"],
            json!({"size": 3, "mode": "a", "extra": {"anything": [1]}})
        );
        for bad in [
            json!({"size": "3"}),
            json!({"size": 11}),
            json!({"mode": "a"}),
            json!({"size": 2, "mode": "c"}),
        ] {
            let mut obj = json!({"metadata": {"name": "t"}, "spec": bad});
            assert_eq!(
                custom_resource(&r, &mut obj).unwrap_err().code,
                422,
                "{obj}"
            );
        }
    }
}
