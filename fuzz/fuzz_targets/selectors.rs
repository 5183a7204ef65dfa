//! Label and field selectors (`labelSelector=`, `fieldSelector=`), parsed and matched against an
//! object: three lines, label selector, field selector, object JSON.
#![no_main]

use kubeedge_core::store::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let labels = LabelSelector::parse(lines.next().unwrap_or_default());
    let fields = FieldSelector::parse(lines.next().unwrap_or_default());
    let object = serde_json::from_str(lines.next().unwrap_or("{}")).unwrap_or_default();
    if let Ok(l) = labels {
        let _ = l.matches(&object);
    }
    if let Ok(f) = fields {
        let _ = f.matches(&object);
    }
});
