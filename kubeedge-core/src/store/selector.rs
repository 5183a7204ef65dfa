//! Kubernetes label and field selectors over JSON objects.
//!
//! Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a`
//! (does not exist), joined by commas. Field selectors: `path=value`, `path==value`,
//! `path!=value`, joined by commas, where `path` is a dotted path into the object
//! (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, ...).

use serde_json::Value;

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} selector {selector:?}: {problem}")]
pub struct Error {
    /// `label` or `field`.
    pub kind: &'static str,
    /// The selector text.
    pub selector: String,
    /// What is wrong.
    pub problem: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn set(values: &str) -> Vec<String> {
    values
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`) as selector text
/// (`a=b,c in (x,y)`) for [`LabelSelector::parse`]; a string passes as it is.
pub fn selector_text(sel: &Value) -> String {
    if let Some(s) = sel.as_str() {
        return s.to_owned();
    }
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

impl LabelSelector {
    /// Parses a label selector.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let err = |problem| Error {
            kind: "label",
            selector: s.to_owned(),
            problem,
        };
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| err("notin needs (values)"))?;
                Requirement::NotIn(k.trim().to_owned(), set(inner))
            } else if let Some((k, rest)) = part.split_once(" in ") {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| err("in needs (values)"))?;
                Requirement::In(k.trim().to_owned(), set(inner))
            } else if part.contains(char::is_whitespace) || part.contains(['(', ')']) {
                return Err(err("unknown operator"));
            } else {
                Requirement::Exists(part.to_owned())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() {
                return Err(err("empty key"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// `true` when it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Boolean fields that field selectors may name; missing, they are `false`.
const BOOLEAN_FIELDS: &[&str] = &["spec.unschedulable", "spec.hostNetwork", "spec.suspend"];

impl FieldSelector {
    /// Parses a field selector.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else {
                return Err(Error {
                    kind: "field",
                    selector: s.to_owned(),
                    problem: "expected path=value or path!=value",
                });
            };
            reqs.push(req);
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether `object` satisfies every requirement. A missing field reads as its default, as the
    /// apiserver's field sets have it: `false` for boolean fields (`spec.unschedulable`,
    /// `spec.hostNetwork`), the empty string otherwise.
    pub fn matches(&self, object: &Value) -> bool {
        let get = |path: &str| -> String {
            let pointer = format!("/{}", path.replace('.', "/"));
            match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if BOOLEAN_FIELDS.contains(&path) => "false".into(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            }
        };
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == *v,
            Requirement::NotEquals(k, v) => get(k) != *v,
            Requirement::In(..)
            | Requirement::NotIn(..)
            | Requirement::Exists(_)
            | Requirement::NotExists(_) => true,
        })
    }

    /// The value this selector requires at `path` with `=`, if any (used to narrow scans).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match r {
            Requirement::Equals(k, v) if k == path => Some(v.as_str()),
            _ => None,
        })
    }

    /// `true` when it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("missing notin (x)", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&pod),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn missing_boolean_fields_are_false() {
        let node = serde_json::json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.unschedulable==false")
                .unwrap()
                .matches(&node)
        );
        assert!(
            !FieldSelector::parse("spec.unschedulable=true")
                .unwrap()
                .matches(&node)
        );
    }

    #[test]
    fn field_selectors() {
        let pod =
            json!({"metadata": {"name": "p1", "namespace": "default"}, "spec": {"nodeName": "e1"}});
        for (sel, want) in [
            ("metadata.name=p1", true),
            ("metadata.name==p2", false),
            ("spec.nodeName=e1,metadata.namespace=default", true),
            ("spec.nodeName!=e1", false),
            ("status.phase=", true),
        ] {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&pod),
                want,
                "{sel}"
            );
        }
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert_eq!(
            FieldSelector::parse("spec.nodeName=e1")
                .unwrap()
                .required("spec.nodeName"),
            Some("e1")
        );
    }
}
