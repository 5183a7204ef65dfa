//! Pushing each reading to a property's `pushMethod`: MQTT (one connection per broker, kept) or
//! HTTP (a POST per reading). The payload is upstream's data model:
//! `{"deviceName","propertyName","namespace","value","type","timestamp"}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kubeedge_core::api::devices::{Device, PushHttp, PushMethod};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{PropertyInfo, lock};
use crate::eventbus::{EventBus, Received};

/// Open MQTT connections by broker address.
#[derive(Default)]
pub(super) struct Pushers {
    mqtt: Mutex<HashMap<String, (EventBus, mpsc::Receiver<Received>)>>,
}

impl Pushers {
    pub(super) async fn push(
        &self,
        method: &PushMethod,
        device: &Device,
        property: &PropertyInfo,
        value: &str,
        timestamp: i64,
    ) {
        let payload = json!({"deviceName": device.name(), "propertyName": property.name,
                             "namespace": device.namespace(), "value": value,
                             "type": property.kind, "timestamp": timestamp});
        if let Some(m) = &method.mqtt {
            let bus = {
                let mut open = lock(&self.mqtt);
                match open.get(&m.address) {
                    Some((bus, _)) => Some(bus.clone()),
                    None => {
                        let id = format!(
                            "mapper-push-{:010}",
                            kubeedge_core::sync::stamp::random_seed() % 10_000_000_000
                        );
                        match EventBus::connect(&m.address, &id, &[]) {
                            Ok((bus, rx)) => {
                                open.insert(m.address.clone(), (bus.clone(), rx));
                                Some(bus)
                            }
                            Err(e) => {
                                tracing::warn!(device = %device.id(), property = %property.name, error = %e, "cannot push over MQTT");
                                None
                            }
                        }
                    }
                }
            };
            if let Some(bus) = bus {
                bus.publish_json(&m.topic, &payload);
            }
        }
        if let Some(h) = &method.http
            && let Err(e) = post(h, &payload).await
        {
            tracing::warn!(device = %device.id(), property = %property.name, error = %e, "HTTP push failed");
        }
    }
}

/// POSTs `body` as JSON to `http://<hostName>:<port><requestPath>`; any 2xx answer is success.
async fn post(h: &PushHttp, body: &serde_json::Value) -> Result<(), String> {
    let host = h
        .host_name
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if h.host_name.starts_with("https://") {
        return Err("https push is not supported; use http".into());
    }
    let path = if h.request_path.starts_with('/') {
        h.request_path.clone()
    } else {
        format!("/{}", h.request_path)
    };
    let timeout = u64::try_from(h.timeout)
        .ok()
        .filter(|&t| t > 0)
        .map_or(Duration::from_secs(5), Duration::from_millis);
    let body = body.to_string();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((
            host,
            u16::try_from(h.port).map_err(|_| format!("bad port {}", h.port))?,
        ))
        .await
        .map_err(|e| format!("connecting to {host}:{}: {e}", h.port))?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            h.port,
            body.len()
        );
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!("HTTP status {status:?}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
