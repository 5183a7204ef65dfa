//! The Bluetooth Low Energy driver (btleplug over BlueZ's D-Bus API), with upstream's Bluetooth
//! mapper settings.
//!
//! Device `spec.protocol.configData`:
//! * `macAddress`: the device's address (`A4:C1:38:0D:12:34`);
//! * `adapter`: the controller to use (`hci0`; default the first one BlueZ lists).
//!
//! A device BlueZ does not know yet is looked for with a scan of up to 4 s; then the driver
//! connects and resolves the GATT services.
//!
//! Property `visitors.configData`:
//! * `characteristicUUID`: the GATT characteristic, as a full UUID or a 16-bit short one
//!   (`2a37`); `serviceUUID` picks the service when several have it;
//! * `dataConverter` (upstream's): `startIndex` and `endIndex` pick the bytes of the value
//!   (big-endian when `startIndex <= endIndex`, little-endian when it is greater; default the
//!   whole value, big-endian), `shiftLeft` and `shiftRight` apply to that integer, then
//!   `orderOfOperations` (`[{operationType: Add|Subtract|Multiply|Divide, operationValue: N}]`)
//!   in order;
//! * `dataWrite`: desired value → bytes to write, as hex (`{"ON": "01", "OFF": "00"}`).
//!
//! A STRING property reads as the value's UTF-8 text; a BOOLEAN one as `true` when the integer
//! is not zero. A desired value found in `dataWrite` writes those bytes; otherwise a STRING one
//! writes its text, a BOOLEAN one a byte 1 or 0, and a number is written as an unsigned integer of
//! the byte range's width in its byte order (the operations are not inverted).
//!
//! Notify: a characteristic that can notify (or indicate) is subscribed to after its first read,
//! and later reads take the latest notification; one just written is read from the device.
//!
//! Tested against BlueZ's D-Bus API as python-dbusmock models it (there is no Bluetooth
//! controller on the build machines): connection, service resolution, read, write, notifications.
//! Radio behaviour (scanning for unknown devices, link loss, pairing) is not tested here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btleplug::api::{
    BDAddr, Central, CharPropFlags, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    WriteType, bleuuid::uuid_from_u16,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use serde_json::Value;
use tokio_stream::StreamExt;
use uuid::Uuid;

use super::{DeviceInfo, Driver, DriverError, PropertyInfo};

/// How long a device BlueZ does not know is scanned for.
const SCAN: Duration = Duration::from_secs(4);

/// The BLE driver (protocol name `bluetooth`, as upstream names it). One D-Bus connection to
/// BlueZ, made on first use, serves every device.
#[derive(Debug, Default)]
pub struct Ble {
    manager: tokio::sync::OnceCell<Manager>,
}

impl Ble {
    /// A driver that connects to BlueZ on the system bus when it first needs it.
    pub fn new() -> Ble {
        Ble::default()
    }
}

/// Notifications by characteristic.
type Latest = Arc<Mutex<HashMap<Uuid, Vec<u8>>>>;

/// A connection to one device.
pub struct BleConn {
    peripheral: Peripheral,
    latest: Latest,
    subscribed: HashSet<Uuid>,
    written: HashSet<Uuid>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for BleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleConn")
            .field("address", &self.peripheral.address())
            .field("subscribed", &self.subscribed.len())
            .finish()
    }
}

impl Drop for BleConn {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        let peripheral = self.peripheral.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), peripheral.disconnect()).await;
            });
        }
    }
}

fn unreachable(e: btleplug::Error) -> DriverError {
    match e {
        btleplug::Error::NoSuchCharacteristic
        | btleplug::Error::NotSupported(_)
        | btleplug::Error::UnexpectedCharacteristic
        | btleplug::Error::Uuid(_)
        | btleplug::Error::InvalidBDAddr(_) => DriverError::Property(e.to_string()),
        _ => DriverError::Unreachable(e.to_string()),
    }
}

/// A UUID in full or 16-bit short form.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    let t = s.trim();
    let short = t.strip_prefix("0x").unwrap_or(t);
    if short.len() <= 4 {
        return u16::from_str_radix(short, 16).ok().map(uuid_from_u16);
    }
    Uuid::parse_str(t).ok()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How a property's bytes become its value and back.
#[derive(Debug, Clone, PartialEq)]
pub struct Visitor {
    /// The characteristic.
    pub characteristic: Uuid,
    /// Its service, when given.
    pub service: Option<Uuid>,
    /// First and last byte of the integer (None: the whole value).
    pub range: Option<(usize, usize)>,
    /// Left shift of the integer.
    pub shift_left: u32,
    /// Right shift of the integer.
    pub shift_right: u32,
    /// Operations, in order: (`Add`/`Subtract`/`Multiply`/`Divide`, operand).
    pub operations: Vec<(String, f64)>,
    /// Desired value → bytes.
    pub writes: HashMap<String, Vec<u8>>,
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
        .collect()
}

impl Visitor {
    /// Parses a property's visitor `configData`.
    pub fn parse(config: &Value) -> Result<Visitor, DriverError> {
        let raw = ["characteristicUUID", "characteristicUuid", "characteristic"]
            .iter()
            .find_map(|k| config[*k].as_str())
            .ok_or_else(|| DriverError::Config("visitor has no characteristicUUID".into()))?;
        let characteristic =
            parse_uuid(raw).ok_or_else(|| DriverError::Config(format!("{raw:?} is not a UUID")))?;
        let service = match config["serviceUUID"].as_str() {
            Some(s) => Some(
                parse_uuid(s).ok_or_else(|| DriverError::Config(format!("{s:?} is not a UUID")))?,
            ),
            None => None,
        };
        let conv = &config["dataConverter"];
        let index = |k: &str| number(&conv[k]).map(|n| n as usize);
        let range = match (index("startIndex"), index("endIndex")) {
            (Some(a), Some(b)) => Some((a, b)),
            (Some(a), None) => Some((a, a)),
            (None, Some(b)) => Some((0, b)),
            (None, None) => None,
        };
        if range.is_some_and(|(a, b)| a.abs_diff(b) >= 8) {
            return Err(DriverError::Config(
                "dataConverter: a value spans at most 8 bytes".into(),
            ));
        }
        let mut operations = Vec::new();
        for op in conv["orderOfOperations"].as_array().into_iter().flatten() {
            let kind = op["operationType"].as_str().unwrap_or("").to_owned();
            if !["Add", "Subtract", "Multiply", "Divide"].contains(&kind.as_str()) {
                return Err(DriverError::Config(format!(
                    "operationType {kind:?} is not one of Add, Subtract, Multiply, Divide"
                )));
            }
            let operand = number(&op["operationValue"])
                .ok_or_else(|| DriverError::Config(format!("{kind} has no operationValue")))?;
            operations.push((kind, operand));
        }
        let mut writes = HashMap::new();
        if let Some(map) = config["dataWrite"].as_object() {
            for (k, v) in map {
                let bytes = v.as_str().and_then(hex).ok_or_else(|| {
                    DriverError::Config(format!("dataWrite {k:?}: {v} is not hex bytes"))
                })?;
                writes.insert(k.clone(), bytes);
            }
        }
        Ok(Visitor {
            characteristic,
            service,
            range,
            shift_left: number(&conv["shiftLeft"]).unwrap_or(0.0) as u32,
            shift_right: number(&conv["shiftRight"]).unwrap_or(0.0) as u32,
            operations,
            writes,
        })
    }

    /// The bytes' integer (the range, in its order).
    fn integer(&self, bytes: &[u8]) -> Result<u64, DriverError> {
        let (a, b) = self
            .range
            .unwrap_or((0, bytes.len().saturating_sub(1).min(7)));
        if a.max(b) >= bytes.len() {
            return Err(DriverError::Property(format!(
                "the value has {} bytes, byte {} is wanted",
                bytes.len(),
                a.max(b)
            )));
        }
        let picked: Vec<u8> = if a <= b {
            bytes[a..=b].to_vec()
        } else {
            bytes[b..=a].iter().rev().copied().collect()
        };
        Ok(picked
            .iter()
            .fold(0u64, |n, byte| (n << 8) | u64::from(*byte)))
    }

    /// The twin's string for `bytes`, for a property of type `kind`.
    pub fn decode(&self, bytes: &[u8], kind: &str) -> Result<String, DriverError> {
        if kind == "string" && self.range.is_none() && self.operations.is_empty() {
            return Ok(String::from_utf8_lossy(bytes)
                .trim_end_matches('\0')
                .to_owned());
        }
        let mut n = self.integer(bytes)?;
        n = n.checked_shl(self.shift_left).unwrap_or(0);
        n = n.checked_shr(self.shift_right).unwrap_or(0);
        if kind == "boolean" {
            return Ok((n != 0).to_string());
        }
        if self.operations.is_empty() {
            return Ok(n.to_string());
        }
        let mut v = n as f64;
        for (op, x) in &self.operations {
            v = match op.as_str() {
                "Add" => v + x,
                "Subtract" => v - x,
                "Multiply" => v * x,
                _ => v / x,
            };
        }
        Ok(v.to_string())
    }

    /// The bytes to write for the twin's string `value`.
    pub fn encode(&self, value: &str, kind: &str) -> Result<Vec<u8>, DriverError> {
        if let Some(bytes) = self.writes.get(value) {
            return Ok(bytes.clone());
        }
        match kind {
            "string" => return Ok(value.as_bytes().to_vec()),
            "boolean" => {
                return match value.trim() {
                    "true" | "1" => Ok(vec![1]),
                    "false" | "0" => Ok(vec![0]),
                    other => Err(DriverError::Property(format!("{other:?} is not a boolean"))),
                };
            }
            _ => {}
        }
        let n: u64 = value.trim().parse().map_err(|_| {
            DriverError::Property(format!(
                "{value:?} has no bytes in dataWrite and is not an unsigned integer"
            ))
        })?;
        let (a, b) = self.range.unwrap_or((0, 0));
        let width = a.abs_diff(b) + 1;
        if width < 8 && n >> (8 * width) != 0 {
            return Err(DriverError::Property(format!(
                "{n} does not fit in {width} byte(s)"
            )));
        }
        let be = n.to_be_bytes()[8 - width..].to_vec();
        Ok(if a <= b {
            be
        } else {
            be.into_iter().rev().collect()
        })
    }
}

impl BleConn {
    fn characteristic(&self, v: &Visitor) -> Result<Characteristic, DriverError> {
        self.peripheral
            .characteristics()
            .into_iter()
            .find(|c| c.uuid == v.characteristic && v.service.is_none_or(|s| s == c.service_uuid))
            .ok_or_else(|| {
                DriverError::Property(format!(
                    "the device has no characteristic {}",
                    v.characteristic
                ))
            })
    }

    async fn subscribe(&mut self, c: &Characteristic) -> Result<(), DriverError> {
        if self.listener.is_none() {
            let mut stream = self.peripheral.notifications().await.map_err(unreachable)?;
            let latest = self.latest.clone();
            self.listener = Some(tokio::spawn(async move {
                while let Some(n) = stream.next().await {
                    if let Ok(mut l) = latest.lock() {
                        l.insert(n.uuid, n.value);
                    }
                }
            }));
        }
        self.peripheral.subscribe(c).await.map_err(unreachable)
    }
}

async fn find(adapter: &Adapter, mac: BDAddr) -> Result<Option<Peripheral>, DriverError> {
    for p in adapter.peripherals().await.map_err(unreachable)? {
        if p.address() == mac {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

impl Driver for Ble {
    type Conn = BleConn;

    fn protocol(&self) -> &str {
        "bluetooth"
    }

    async fn connect(&self, device: &DeviceInfo) -> Result<BleConn, DriverError> {
        let c = &device.config;
        let raw = c["macAddress"]
            .as_str()
            .ok_or_else(|| DriverError::Config("configData has no macAddress".into()))?;
        let mac = BDAddr::from_str_delim(raw.trim())
            .map_err(|_| DriverError::Config(format!("macAddress {raw:?} is not an address")))?;
        let manager = self
            .manager
            .get_or_try_init(Manager::new)
            .await
            .map_err(unreachable)?;
        let adapters = manager.adapters().await.map_err(unreachable)?;
        let wanted = c["adapter"].as_str();
        let mut adapter = None;
        for a in adapters {
            let info = a.adapter_info().await.unwrap_or_default();
            if wanted.is_none_or(|w| info.split_whitespace().next() == Some(w)) {
                adapter = Some(a);
                break;
            }
        }
        let adapter = adapter.ok_or_else(|| {
            DriverError::Unreachable(match wanted {
                Some(w) => format!("no Bluetooth adapter {w}"),
                None => "no Bluetooth adapter".into(),
            })
        })?;
        let peripheral = match find(&adapter, mac).await? {
            Some(p) => p,
            None => {
                adapter
                    .start_scan(ScanFilter::default())
                    .await
                    .map_err(unreachable)?;
                let deadline = tokio::time::Instant::now() + SCAN;
                let mut found = None;
                while found.is_none() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    found = find(&adapter, mac).await?;
                }
                let _ = adapter.stop_scan().await;
                found.ok_or_else(|| {
                    DriverError::Unreachable(format!("{mac} not found in a {SCAN:?} scan"))
                })?
            }
        };
        if !peripheral.is_connected().await.map_err(unreachable)? {
            match peripheral.connect().await {
                Ok(()) => {}
                // BlueZ may have connected it for someone else already.
                Err(e) if e.to_string().contains("AlreadyConnected") => {}
                Err(e) => return Err(unreachable(e)),
            }
        }
        peripheral.discover_services().await.map_err(unreachable)?;
        Ok(BleConn {
            peripheral,
            latest: Latest::default(),
            subscribed: HashSet::new(),
            written: HashSet::new(),
            listener: None,
        })
    }

    async fn read(
        &self,
        conn: &mut BleConn,
        property: &PropertyInfo,
    ) -> Result<String, DriverError> {
        let v = Visitor::parse(&property.visitor)?;
        if conn.subscribed.contains(&v.characteristic) && !conn.written.contains(&v.characteristic)
        {
            let latest = conn
                .latest
                .lock()
                .ok()
                .and_then(|l| l.get(&v.characteristic).cloned());
            if let Some(bytes) = latest {
                return v.decode(&bytes, &property.kind);
            }
        }
        let c = conn.characteristic(&v)?;
        let bytes = conn.peripheral.read(&c).await.map_err(unreachable)?;
        if conn.written.remove(&v.characteristic)
            && let Ok(mut l) = conn.latest.lock()
        {
            l.remove(&v.characteristic);
        }
        if c.properties
            .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
            && conn.subscribed.insert(v.characteristic)
            && let Err(e) = conn.subscribe(&c).await
        {
            tracing::debug!(characteristic = %v.characteristic, error = %e, "no notifications, polling instead");
        }
        v.decode(&bytes, &property.kind)
    }

    async fn write(
        &self,
        conn: &mut BleConn,
        property: &PropertyInfo,
        value: &str,
    ) -> Result<(), DriverError> {
        let v = Visitor::parse(&property.visitor)?;
        let bytes = v.encode(value, &property.kind)?;
        let c = conn.characteristic(&v)?;
        let kind = if c.properties.contains(CharPropFlags::WRITE) {
            WriteType::WithResponse
        } else {
            WriteType::WithoutResponse
        };
        conn.peripheral
            .write(&c, &bytes, kind)
            .await
            .map_err(unreachable)?;
        conn.written.insert(v.characteristic);
        Ok(())
    }

    async fn health(&self, conn: &mut BleConn) -> Result<(), DriverError> {
        if conn.peripheral.is_connected().await.map_err(unreachable)? {
            Ok(())
        } else {
            Err(DriverError::Unreachable("the device disconnected".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uuids_in_full_and_short_form() {
        assert_eq!(
            parse_uuid("2a37").unwrap().to_string(),
            "00002a37-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(parse_uuid("0x2A37"), parse_uuid("2a37"));
        assert_eq!(
            parse_uuid("00002a37-0000-1000-8000-00805f9b34fb"),
            parse_uuid("2a37")
        );
        assert!(parse_uuid("zz").is_none());
    }

    #[test]
    fn data_converter_picks_bytes_shifts_and_computes() {
        let v = Visitor::parse(&json!({
            "characteristicUUID": "2a6e",
            "dataConverter": {"startIndex": 2, "endIndex": 1,
                "orderOfOperations": [{"operationType": "Divide", "operationValue": "100"}]}
        }))
        .unwrap();
        // little-endian 0x0929 = 2345 → 23.45
        assert_eq!(v.decode(&[0x00, 0x29, 0x09], "float").unwrap(), "23.45");
        assert!(v.decode(&[0x00, 0x29], "float").is_err());
        let v = Visitor::parse(&json!({
            "characteristicUUID": "2a37",
            "dataConverter": {"startIndex": 1, "endIndex": 1}
        }))
        .unwrap();
        assert_eq!(v.decode(&[0x00, 72], "int").unwrap(), "72");
        assert_eq!(v.encode("90", "int").unwrap(), vec![90]);
        assert!(v.encode("300", "int").is_err());
        let v = Visitor::parse(&json!({
            "characteristicUUID": "2a37",
            "dataConverter": {"startIndex": 0, "endIndex": 0, "shiftRight": 7}
        }))
        .unwrap();
        assert_eq!(v.decode(&[0x80], "boolean").unwrap(), "true");
        assert_eq!(v.decode(&[0x7f], "boolean").unwrap(), "false");
    }

    #[test]
    fn writes_use_the_data_write_table_first() {
        let v = Visitor::parse(&json!({
            "characteristicUUID": "fff1",
            "dataWrite": {"ON": "01ff", "OFF": "0000"}
        }))
        .unwrap();
        assert_eq!(v.encode("ON", "string").unwrap(), vec![1, 0xff]);
        assert_eq!(v.encode("hello", "string").unwrap(), b"hello".to_vec());
        assert_eq!(v.decode(b"hello\0", "string").unwrap(), "hello");
        assert!(
            Visitor::parse(&json!({"characteristicUUID": "fff1", "dataWrite": {"ON": "0g"}}))
                .is_err()
        );
        assert!(Visitor::parse(&json!({})).is_err());
    }
}
