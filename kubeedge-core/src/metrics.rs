//! Process-wide counters in the Prometheus text exposition format (version 0.0.4), as
//! kube-apiserver and the kubelet serve them on `/metrics`.
//!
//! A counter is registered once per name and label set and then only incremented; [`render`]
//! writes every registered counter, grouped by name with its `# HELP` and `# TYPE` lines. The API
//! server of the embedded control plane and the edge's metaserver serve it on `GET /metrics`.
//!
//! ```
//! use kubeedge_core::metrics;
//! let refused = metrics::counter(
//!     "kubeedge_doc_example_total",
//!     "What this example counted.",
//!     &[("server", "doc")],
//! );
//! refused.inc();
//! assert!(metrics::render().contains("kubeedge_doc_example_total{server=\"doc\"} 1"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Family {
    help: &'static str,
    /// Rendered label set (`{a="x",b="y"}`, or empty) → counter.
    series: BTreeMap<String, Arc<Counter>>,
}

fn registry() -> &'static Mutex<BTreeMap<&'static str, Family>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<&'static str, Family>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The counter `name` with `labels`, registered on first use (the same name and labels give the
/// same counter). `help` describes the family; the first registration's text is kept.
pub fn counter(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Arc<Counter> {
    let mut rendered = String::new();
    if !labels.is_empty() {
        rendered.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            let _ = write!(rendered, "{k}=\"{}\"", escape(v));
        }
        rendered.push('}');
    }
    let mut families = registry().lock().unwrap_or_else(|e| e.into_inner());
    let family = families.entry(name).or_insert_with(|| Family {
        help,
        series: BTreeMap::new(),
    });
    family.series.entry(rendered).or_default().clone()
}

/// Every registered counter, in the text exposition format.
pub fn render() -> String {
    let families = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (name, family) in families.iter() {
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} counter");
        for (labels, counter) in &family.series {
            let _ = writeln!(out, "{name}{labels} {}", counter.get());
        }
    }
    out
}

/// The content type [`render`]'s text is served with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_by_family_with_escaped_labels() {
        let a = counter("kubeedge_test_render_total", "Test.", &[("why", "a\"b")]);
        let b = counter("kubeedge_test_render_total", "Other.", &[("why", "c")]);
        a.inc();
        a.add(2);
        b.inc();
        assert_eq!(
            counter("kubeedge_test_render_total", "", &[("why", "a\"b")]).get(),
            3
        );
        let text = render();
        let family: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("kubeedge_test_render_total"))
            .collect();
        assert_eq!(
            family,
            [
                "# HELP kubeedge_test_render_total Test.",
                "# TYPE kubeedge_test_render_total counter",
                "kubeedge_test_render_total{why=\"a\\\"b\"} 3",
                "kubeedge_test_render_total{why=\"c\"} 1",
            ]
        );
    }
}
