//! The patch formats on their own: a document and a patch, separated by a NUL byte, applied as
//! JSON merge patch, strategic merge patch and JSON patch.
#![no_main]

use kubeedge_core::kubeapi::patch;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (doc, p) = kubeedge_fuzz::split(data, 0);
    let (Ok(doc), Ok(p)) = (
        serde_json::from_slice::<Value>(doc),
        serde_json::from_slice::<Value>(p),
    ) else {
        return;
    };
    let mut merged = doc.clone();
    patch::merge(&mut merged, &p);
    let mut strategic = doc.clone();
    // Refusals (an item without its merge key, a bad directive) are answers, not failures.
    let _ = patch::strategic(&mut strategic, &p);
    let mut patched = doc;
    let _ = patch::json_patch(&mut patched, &p);
});
