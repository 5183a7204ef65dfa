//! Device twin payloads from MQTT (mappers and apps): upstream's JSON documents, applied to a twin.
#![no_main]

use kubeedge_core::api::twin::{
    DeviceStateUpdate, DeviceTwinDocument, DeviceTwinUpdate, MembershipDetail,
};
use kubeedge_device::twin::DeviceTwin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = serde_json::from_slice::<DeviceTwinUpdate>(data) {
        let mut twin = DeviceTwin::default();
        if twin.apply(&update, 1).is_ok() {
            let _ = twin.delta();
            let _ = twin.delta_message("e", 2);
            let _ = twin.plain();
        }
    }
    let _ = serde_json::from_slice::<DeviceTwinDocument>(data);
    let _ = serde_json::from_slice::<DeviceStateUpdate>(data);
    let _ = serde_json::from_slice::<MembershipDetail>(data);
});
