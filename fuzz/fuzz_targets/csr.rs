//! Certificate signing requests from edges (`/edge.crt`) and from the CSR API, and the
//! certificates the API reads identities from.
#![no_main]

use std::time::{Duration, SystemTime};

use kubeedge_core::pki;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ca = kubeedge_fuzz::ca();
    let now = SystemTime::now();
    if let Ok(cert) = ca.sign_csr(data, "e1", Duration::from_secs(3600), now) {
        assert_eq!(pki::node_name(&cert).ok().as_deref(), Some("e1"));
    }
    let _ = ca.sign_client_csr(data, Duration::from_secs(3600), now);
    let _ = pki::node_name(data);
    let _ = pki::subject(data);
    let _ = pki::validity(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pki::pem_block(text, "CERTIFICATE REQUEST");
    }
});
