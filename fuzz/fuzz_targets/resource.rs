//! Resource strings of the message route (`<ns>/<type>/<name>`, `node/<id>/<ns>/<type>/<name>`):
//! what parses prints back as itself.
#![no_main]

use kubeedge_core::resource::{CloudRef, ObjectRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = text.parse::<ObjectRef>() {
        assert_eq!(r.to_string().parse::<ObjectRef>().ok(), Some(r));
    }
    if let Ok(r) = text.parse::<CloudRef>() {
        assert_eq!(r.to_string().parse::<CloudRef>().ok(), Some(r));
    }
});
