//! DMI requests from mappers (gRPC bodies over the node's Unix socket), decoded and turned into
//! the API's devices, models and twin updates.
#![no_main]

use kubeedge_device::dmi::{self, v1beta1};
use kubeedge_device::twin;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let body = &data[1..];
    match data[0] % 6 {
        0 => {
            let _ = v1beta1::MapperRegisterRequest::decode(body);
        }
        1 => {
            if let Ok(r) = v1beta1::ReportDeviceStatusRequest::decode(body)
                && let Some(status) = &r.reported_device
            {
                let _ = twin::from_reported(&status.twins, "event", 1);
            }
        }
        2 => {
            let _ = v1beta1::ReportDeviceStatesRequest::decode(body);
        }
        3 => {
            if let Ok(r) = v1beta1::RegisterDeviceRequest::decode(body)
                && let Some(d) = &r.device
            {
                let device = dmi::device_from_dmi(d);
                let _ = dmi::device(&device);
            }
        }
        4 => {
            if let Ok(r) = v1beta1::CreateDeviceModelRequest::decode(body)
                && let Some(m) = &r.model
            {
                let model = dmi::model_from_dmi(m);
                let _ = dmi::model(&model);
            }
        }
        _ => {
            if let Ok(any) = prost_types_any(body) {
                let _ = dmi::from_any(&any);
            }
        }
    }
});

fn prost_types_any(body: &[u8]) -> Result<prost_types::Any, prost::DecodeError> {
    prost_types::Any::decode(body)
}
