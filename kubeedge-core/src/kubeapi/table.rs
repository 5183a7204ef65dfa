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

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).ok()
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
        _ => |_| Vec::new(),
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
