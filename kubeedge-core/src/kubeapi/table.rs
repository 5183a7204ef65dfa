//! `meta.k8s.io/v1` Table output, what `kubectl get` prints.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::registry::Resource;

fn column(name: &str, kind: &str) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": 0})
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    let Some(then) = parse_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(then);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of an RFC 3339 time.
fn parse_rfc3339(s: &str) -> Option<u64> {
    super::protobuf::parse_time(s).and_then(|(secs, _)| u64::try_from(secs).ok())
}

fn pod_cells(p: &Value) -> Vec<Value> {
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let total = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c["ready"].as_bool() == Some(true))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
    });
    let waiting = statuses.and_then(|s| {
        s.iter()
            .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
    });
    let status = if p.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating".to_owned()
    } else {
        waiting
            .or_else(|| p.pointer("/status/reason").and_then(Value::as_str))
            .or_else(|| p.pointer("/status/phase").and_then(Value::as_str))
            .unwrap_or("Pending")
            .to_owned()
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
    ]
}

fn node_cells(n: &Value) -> Vec<Value> {
    let ready = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            _ => "NotReady",
        })
        .unwrap_or("Unknown");
    let roles: Vec<&str> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    };
    let version = n
        .pointer("/status/nodeInfo/kubeletVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    vec![json!(ready), json!(roles), json!(version)]
}

type Cells = fn(&Value) -> Vec<Value>;

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn text(v: &Value, pointer: &str, missing: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => missing.to_owned(),
    }
}

fn service_ports(s: &Value) -> Value {
    let ports: Vec<String> = s
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let node = p["nodePort"]
                        .as_i64()
                        .map(|n| format!(":{n}"))
                        .unwrap_or_default();
                    format!(
                        "{}{node}/{}",
                        p["port"],
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!(if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    })
}

fn csr_condition(c: &Value) -> Value {
    let conditions: Vec<&str> = c
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["type"].as_str()).collect())
        .unwrap_or_default();
    let mut shown = if conditions.is_empty() {
        "Pending".to_owned()
    } else {
        conditions.join(",")
    };
    if c.pointer("/status/certificate").is_some() {
        shown.push_str(",Issued");
    }
    json!(shown)
}

/// The extra columns of the kinds kubectl users look at most (as the apiserver prints them).
fn cells_of(r: &Resource) -> Option<(&'static [(&'static str, &'static str)], Cells)> {
    let out: (&'static [(&'static str, &'static str)], Cells) =
        match (r.group.as_str(), r.plural.as_str()) {
            ("", "configmaps") => (&[("Data", "integer")], |o| {
                vec![json!(count(&o["data"]) + count(&o["binaryData"]))]
            }),
            ("", "secrets") => (&[("Type", "string"), ("Data", "integer")], |o| {
                vec![json!(text(o, "/type", "Opaque")), json!(count(&o["data"]))]
            }),
            ("", "namespaces") => (&[("Status", "string")], |o| {
                vec![json!(text(o, "/status/phase", "Active"))]
            }),
            ("", "services") => (
                &[
                    ("Type", "string"),
                    ("Cluster-IP", "string"),
                    ("External-IP", "string"),
                    ("Port(s)", "string"),
                ],
                |o| {
                    vec![
                        json!(text(o, "/spec/type", "ClusterIP")),
                        json!(text(o, "/spec/clusterIP", "<none>")),
                        json!(text(o, "/spec/externalName", "<none>")),
                        service_ports(o),
                    ]
                },
            ),
            ("apps", "deployments") => (
                &[
                    ("Ready", "string"),
                    ("Up-to-date", "integer"),
                    ("Available", "integer"),
                ],
                |o| {
                    vec![
                        json!(format!(
                            "{}/{}",
                            int(o, "/status/readyReplicas"),
                            int(o, "/spec/replicas")
                        )),
                        json!(int(o, "/status/updatedReplicas")),
                        json!(int(o, "/status/availableReplicas")),
                    ]
                },
            ),
            ("apps", "replicasets") => (
                &[
                    ("Desired", "integer"),
                    ("Current", "integer"),
                    ("Ready", "integer"),
                ],
                |o| {
                    vec![
                        json!(int(o, "/spec/replicas")),
                        json!(int(o, "/status/replicas")),
                        json!(int(o, "/status/readyReplicas")),
                    ]
                },
            ),
            ("apps", "statefulsets") => (&[("Ready", "string")], |o| {
                vec![json!(format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                ))]
            }),
            ("apps", "daemonsets") => (
                &[
                    ("Desired", "integer"),
                    ("Current", "integer"),
                    ("Ready", "integer"),
                ],
                |o| {
                    vec![
                        json!(int(o, "/status/desiredNumberScheduled")),
                        json!(int(o, "/status/currentNumberScheduled")),
                        json!(int(o, "/status/numberReady")),
                    ]
                },
            ),
            ("batch", "jobs") => (&[("Completions", "string")], |o| {
                vec![json!(format!(
                    "{}/{}",
                    int(o, "/status/succeeded"),
                    int(o, "/spec/completions").max(1)
                ))]
            }),
            ("policy", "poddisruptionbudgets") => (
                &[
                    ("Min Available", "string"),
                    ("Max Unavailable", "string"),
                    ("Allowed Disruptions", "integer"),
                ],
                |o| {
                    vec![
                        json!(text(o, "/spec/minAvailable", "N/A")),
                        json!(text(o, "/spec/maxUnavailable", "N/A")),
                        json!(int(o, "/status/disruptionsAllowed")),
                    ]
                },
            ),
            ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
                (&[("Role", "string")], |o| {
                    vec![json!(format!(
                        "{}/{}",
                        text(o, "/roleRef/kind", ""),
                        text(o, "/roleRef/name", "")
                    ))]
                })
            }
            ("certificates.k8s.io", "certificatesigningrequests") => (
                &[
                    ("SignerName", "string"),
                    ("Requestor", "string"),
                    ("Condition", "string"),
                ],
                |o| {
                    vec![
                        json!(text(o, "/spec/signerName", "")),
                        json!(text(o, "/spec/username", "")),
                        csr_condition(o),
                    ]
                },
            ),
            ("" | "events.k8s.io", "events") => (
                &[
                    ("Type", "string"),
                    ("Reason", "string"),
                    ("Message", "string"),
                ],
                |o| {
                    vec![
                        json!(text(o, "/type", "")),
                        json!(text(o, "/reason", "")),
                        json!(
                            o.get("message")
                                .or_else(|| o.get("note"))
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                        ),
                    ]
                },
            ),
            _ => return None,
        };
    Some(out)
}

/// The Table for `items` of `resource`.
pub fn table(resource: &Resource, items: &[Value], rv: Value) -> Value {
    let is_core = resource.group.is_empty();
    let mut columns = vec![column("Name", "string")];
    let extra: fn(&Value) -> Vec<Value> = match (is_core, resource.plural.as_str()) {
        (true, "pods") => {
            columns.extend([
                column("Ready", "string"),
                column("Status", "string"),
                column("Restarts", "integer"),
            ]);
            pod_cells
        }
        (true, "nodes") => {
            columns.extend([
                column("Status", "string"),
                column("Roles", "string"),
                column("Version", "string"),
            ]);
            node_cells
        }
        _ => match cells_of(resource) {
            Some((names, cells)) => {
                columns.extend(names.iter().map(|(n, t)| column(n, t)));
                cells
            }
            None => |_| Vec::new(),
        },
    };
    columns.push(column("Age", "string"));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            cells.extend(extra(o));
            cells.push(json!(age(o)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                               "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_what_the_store_writes() {
        let now = std::time::SystemTime::now();
        let s = crate::store::rfc3339(now);
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(super::parse_rfc3339(&s), Some(secs));
        assert_eq!(
            super::parse_rfc3339("2024-02-29T12:00:00Z"),
            Some(1_709_208_000)
        );
    }
}
