//! Kubernetes protobuf bodies (`k8s\0` envelope, `runtime.Unknown`, the built-in types), decoded
//! to JSON and encoded back.
#![no_main]

use kubeedge_core::kubeapi::protobuf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = protobuf::decode(data) {
        let _ = protobuf::encode(&object);
    }
});
