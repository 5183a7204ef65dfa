//! The Modbus driver (tokio-modbus), TCP and RTU, with upstream's modbus mapper settings.
//!
//! Device `spec.protocol.configData`:
//! * TCP: `ip`, `port` (default 502), `slaveID` (or `deviceID`; default 1);
//! * RTU: `serialPort` (`/dev/ttyUSB0`), `baudRate` (default 9600), `dataBits` (default 8),
//!   `parity` (`none`, `even`, `odd`; default `even`), `stopBits` (default 1), `slaveID`.
//!
//! Property `visitors.configData`:
//! * `register`: `CoilRegister`, `DiscreteInputRegister`, `HoldingRegister` or `InputRegister`;
//! * `offset`: the 0-based protocol address;
//! * `dataType`: `int16`, `uint16`, `int32`, `uint32`, `float32` or `boolean` (by default from the
//!   model's property type: `boolean` for BOOLEAN, `float32` for FLOAT and DOUBLE, `int16` for
//!   INT, `int32` when `limit` is 2);
//! * `scale` (default 1) and `valueOffset` (default 0): the value is `raw × scale + valueOffset`
//!   (and a desired value is written as `(value − valueOffset) / scale`, rounded);
//! * `isSwap`: swap the two bytes of each register; `isRegisterSwap`: low word first for 32-bit
//!   values.

use std::net::{SocketAddr, ToSocketAddrs};

use serde_json::Value;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

use super::{DeviceInfo, Driver, DriverError, PropertyInfo};

/// The Modbus driver (protocol name `modbus`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Modbus;

/// Which table a property lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Read/write bits.
    Coil,
    /// Read-only bits.
    DiscreteInput,
    /// Read/write registers.
    Holding,
    /// Read-only registers.
    Input,
}

/// How register contents are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// One register, signed.
    Int16,
    /// One register, unsigned.
    Uint16,
    /// Two registers, signed.
    Int32,
    /// Two registers, unsigned.
    Uint32,
    /// Two registers, IEEE 754.
    Float32,
    /// One bit (coils, discrete inputs).
    Boolean,
}

impl DataType {
    fn words(self) -> u16 {
        match self {
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            _ => 1,
        }
    }
}

/// A property's place and encoding, parsed from its visitor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Visitor {
    /// The table.
    pub table: Table,
    /// The 0-based address.
    pub address: u16,
    /// The encoding.
    pub data_type: DataType,
    /// Multiplier.
    pub scale: f64,
    /// Addend.
    pub value_offset: f64,
    /// Byte swap within each register.
    pub byte_swap: bool,
    /// Low word first.
    pub word_swap: bool,
}

fn number(v: &Value, key: &str) -> Option<f64> {
    match &v[key] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn flag(v: &Value, key: &str) -> bool {
    match &v[key] {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

impl Visitor {
    /// Parses a property's visitor `configData` (and model type, lower case).
    pub fn parse(config: &Value, kind: &str) -> Result<Visitor, DriverError> {
        let table = match config["register"].as_str().unwrap_or("") {
            "CoilRegister" | "Coil" | "coil" => Table::Coil,
            "DiscreteInputRegister" | "DiscreteInput" | "discreteInput" => Table::DiscreteInput,
            "HoldingRegister" | "Holding" | "holding" => Table::Holding,
            "InputRegister" | "Input" | "input" => Table::Input,
            other => {
                return Err(DriverError::Config(format!(
                    "register {other:?} is not one of CoilRegister, DiscreteInputRegister, HoldingRegister, InputRegister"
                )));
            }
        };
        let address = number(config, "offset").ok_or_else(|| {
            DriverError::Config("visitor has no offset (register address)".into())
        })?;
        if !(0.0..=65535.0).contains(&address) || address.fract() != 0.0 {
            return Err(DriverError::Config(format!(
                "offset {address} is not a register address (0-65535)"
            )));
        }
        let bits = matches!(table, Table::Coil | Table::DiscreteInput);
        let data_type = match config["dataType"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("int16") => DataType::Int16,
            Some("uint16") => DataType::Uint16,
            Some("int32") => DataType::Int32,
            Some("uint32") => DataType::Uint32,
            Some("float32" | "float") => DataType::Float32,
            Some("boolean" | "bool") => DataType::Boolean,
            Some(other) => {
                return Err(DriverError::Config(format!(
                    "dataType {other:?} is not one of int16, uint16, int32, uint32, float32, boolean"
                )));
            }
            None if bits || kind == "boolean" => DataType::Boolean,
            None if matches!(kind, "float" | "double") => DataType::Float32,
            None if number(config, "limit") == Some(2.0) => DataType::Int32,
            None => DataType::Int16,
        };
        if bits != (data_type == DataType::Boolean) {
            return Err(DriverError::Config(format!(
                "dataType {data_type:?} does not fit register {:?}",
                config["register"]
            )));
        }
        Ok(Visitor {
            table,
            address: address as u16,
            data_type,
            scale: number(config, "scale").filter(|s| *s != 0.0).unwrap_or(1.0),
            value_offset: number(config, "valueOffset").unwrap_or(0.0),
            byte_swap: flag(config, "isSwap"),
            word_swap: flag(config, "isRegisterSwap"),
        })
    }

    /// Registers (as read, high word first unless `word_swap`) to the twin's value.
    pub fn decode(&self, words: &[u16]) -> Result<String, DriverError> {
        let w: Vec<u16> = words
            .iter()
            .map(|w| if self.byte_swap { w.swap_bytes() } else { *w })
            .collect();
        let wide = || -> Result<u32, DriverError> {
            let (a, b) = match w.as_slice() {
                [a, b] => (*a, *b),
                _ => {
                    return Err(DriverError::Property(format!(
                        "expected 2 registers, got {}",
                        w.len()
                    )));
                }
            };
            let (hi, lo) = if self.word_swap { (b, a) } else { (a, b) };
            Ok((u32::from(hi) << 16) | u32::from(lo))
        };
        let first = || {
            w.first()
                .copied()
                .ok_or_else(|| DriverError::Property("no register in the answer".into()))
        };
        let raw = match self.data_type {
            DataType::Int16 => f64::from(first()? as i16),
            DataType::Uint16 => f64::from(first()?),
            DataType::Int32 => f64::from(wide()? as i32),
            DataType::Uint32 => f64::from(wide()?),
            DataType::Float32 => f64::from(f32::from_bits(wide()?)),
            DataType::Boolean => return Ok((first()? != 0).to_string()),
        };
        let v = raw * self.scale + self.value_offset;
        // Float32 values print as the f32 they are (21.5, not 21.499999...).
        if self.data_type == DataType::Float32 && self.scale == 1.0 && self.value_offset == 0.0 {
            return Ok((v as f32).to_string());
        }
        Ok(v.to_string())
    }

    /// The twin's value to registers (in the order to write them).
    pub fn encode(&self, value: &str) -> Result<Vec<u16>, DriverError> {
        let bad =
            || DriverError::Property(format!("value {value:?} does not fit {:?}", self.data_type));
        let v: f64 = value.trim().parse().map_err(|_| bad())?;
        let raw = (v - self.value_offset) / self.scale;
        let int = |lo: f64, hi: f64| {
            let r = raw.round();
            if r < lo || r > hi { Err(bad()) } else { Ok(r) }
        };
        let words: Vec<u16> = match self.data_type {
            DataType::Int16 => vec![int(f64::from(i16::MIN), f64::from(i16::MAX))? as i16 as u16],
            DataType::Uint16 => vec![int(0.0, f64::from(u16::MAX))? as u16],
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => {
                let bits = match self.data_type {
                    DataType::Int32 => int(f64::from(i32::MIN), f64::from(i32::MAX))? as i32 as u32,
                    DataType::Uint32 => int(0.0, f64::from(u32::MAX))? as u32,
                    _ => (raw as f32).to_bits(),
                };
                let (hi, lo) = ((bits >> 16) as u16, bits as u16);
                if self.word_swap {
                    vec![lo, hi]
                } else {
                    vec![hi, lo]
                }
            }
            DataType::Boolean => return Err(bad()),
        };
        Ok(words
            .into_iter()
            .map(|w| if self.byte_swap { w.swap_bytes() } else { w })
            .collect())
    }
}

fn boolean(value: &str) -> Result<bool, DriverError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => Err(DriverError::Property(format!(
            "value {value:?} is not a boolean"
        ))),
    }
}

fn slave(config: &Value) -> Result<Slave, DriverError> {
    let id = number(config, "slaveID")
        .or_else(|| number(config, "deviceID"))
        .unwrap_or(1.0);
    if !(0.0..=255.0).contains(&id) {
        return Err(DriverError::Config(format!("slaveID {id} is not 0-255")));
    }
    Ok(Slave(id as u8))
}

/// The answer of one Modbus request, as the driver's error kinds.
fn answer<T>(r: tokio_modbus::Result<T>) -> Result<T, DriverError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(code)) => Err(DriverError::Property(format!(
            "Modbus exception: {}",
            exception(code)
        ))),
        Err(e) => Err(DriverError::Unreachable(e.to_string())),
    }
}

fn exception(code: ExceptionCode) -> String {
    match code {
        ExceptionCode::IllegalFunction => "illegal function (01)".into(),
        ExceptionCode::IllegalDataAddress => "illegal data address (02)".into(),
        ExceptionCode::IllegalDataValue => "illegal data value (03)".into(),
        ExceptionCode::ServerDeviceFailure => "server device failure (04)".into(),
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond (0B)".into(),
        other => format!("{other:?}"),
    }
}

impl Driver for Modbus {
    type Conn = Context;

    fn protocol(&self) -> &str {
        "modbus"
    }

    async fn connect(&self, device: &DeviceInfo) -> Result<Context, DriverError> {
        let c = &device.config;
        let slave = slave(c)?;
        if let Some(port) = c["serialPort"].as_str() {
            let baud = number(c, "baudRate").unwrap_or(9600.0) as u32;
            let data_bits = match number(c, "dataBits").unwrap_or(8.0) as u8 {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            };
            let parity = match c["parity"]
                .as_str()
                .unwrap_or("even")
                .to_ascii_lowercase()
                .as_str()
            {
                "none" | "n" => tokio_serial::Parity::None,
                "odd" | "o" => tokio_serial::Parity::Odd,
                _ => tokio_serial::Parity::Even,
            };
            let stop = if number(c, "stopBits") == Some(2.0) {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let builder = tokio_serial::new(port, baud)
                .data_bits(data_bits)
                .parity(parity)
                .stop_bits(stop);
            let stream = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| DriverError::Unreachable(format!("opening {port}: {e}")))?;
            return Ok(tokio_modbus::client::rtu::attach_slave(stream, slave));
        }
        let ip = c["ip"].as_str().ok_or_else(|| {
            DriverError::Config("configData has neither ip (TCP) nor serialPort (RTU)".into())
        })?;
        let port = number(c, "port").unwrap_or(502.0);
        let addr: SocketAddr = (ip, port as u16)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| DriverError::Config(format!("{ip}:{port} is not an address")))?;
        tokio_modbus::client::tcp::connect_slave(addr, slave)
            .await
            .map_err(|e| DriverError::Unreachable(format!("{addr}: {e}")))
    }

    async fn read(
        &self,
        conn: &mut Context,
        property: &PropertyInfo,
    ) -> Result<String, DriverError> {
        let v = Visitor::parse(&property.visitor, &property.kind)?;
        match v.table {
            Table::Coil => answer(conn.read_coils(v.address, 1).await)
                .and_then(|b| {
                    b.first()
                        .copied()
                        .ok_or_else(|| DriverError::Property("empty answer".into()))
                })
                .map(|b| b.to_string()),
            Table::DiscreteInput => answer(conn.read_discrete_inputs(v.address, 1).await)
                .and_then(|b| {
                    b.first()
                        .copied()
                        .ok_or_else(|| DriverError::Property("empty answer".into()))
                })
                .map(|b| b.to_string()),
            Table::Holding => v.decode(&answer(
                conn.read_holding_registers(v.address, v.data_type.words())
                    .await,
            )?),
            Table::Input => v.decode(&answer(
                conn.read_input_registers(v.address, v.data_type.words())
                    .await,
            )?),
        }
    }

    async fn write(
        &self,
        conn: &mut Context,
        property: &PropertyInfo,
        value: &str,
    ) -> Result<(), DriverError> {
        let v = Visitor::parse(&property.visitor, &property.kind)?;
        match v.table {
            Table::Coil => answer(conn.write_single_coil(v.address, boolean(value)?).await),
            Table::Holding => {
                let words = v.encode(value)?;
                if let [w] = words.as_slice() {
                    answer(conn.write_single_register(v.address, *w).await)
                } else {
                    answer(conn.write_multiple_registers(v.address, &words).await)
                }
            }
            Table::DiscreteInput | Table::Input => Err(DriverError::Config(format!(
                "{:?} registers are read-only",
                v.table
            ))),
        }
    }

    async fn health(&self, _conn: &mut Context) -> Result<(), DriverError> {
        // Modbus has no request that is valid on every device; the next read tells.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn visitor(config: Value, kind: &str) -> Visitor {
        Visitor::parse(&config, kind).unwrap()
    }

    #[test]
    fn decodes_and_encodes_every_type_and_order() {
        let f = visitor(
            json!({"register": "HoldingRegister", "offset": 10}),
            "float",
        );
        assert_eq!(f.data_type, DataType::Float32);
        let words = f.encode("21.5").unwrap();
        assert_eq!(words, [0x41AC, 0x0000]);
        assert_eq!(f.decode(&words).unwrap(), "21.5");
        let i = visitor(
            json!({"register": "HoldingRegister", "offset": 20, "dataType": "int32"}),
            "int",
        );
        let words = i.encode("-123456").unwrap();
        assert_eq!(i.decode(&words).unwrap(), "-123456");
        let swapped = visitor(
            json!({"register": "HoldingRegister", "offset": 20, "dataType": "int32",
                                     "isRegisterSwap": true, "isSwap": true}),
            "int",
        );
        let w = swapped.encode("-123456").unwrap();
        // -123456 = 0xFFFE_1DC0: low word first, each register's bytes swapped.
        assert_eq!(w, [0xC01D, 0xFEFF]);
        assert_eq!(swapped.decode(&w).unwrap(), "-123456");
        let scaled = visitor(
            json!({"register": "InputRegister", "offset": 0, "scale": 0.1, "valueOffset": -40}),
            "",
        );
        assert_eq!(
            scaled.decode(&[653]).unwrap(),
            format!("{}", 653.0 * 0.1 - 40.0)
        );
        assert_eq!(scaled.encode("25.3").unwrap(), [653]);
        let u = visitor(
            json!({"register": "HoldingRegister", "offset": 0, "dataType": "uint16"}),
            "",
        );
        assert_eq!(u.decode(&[65535]).unwrap(), "65535");
        assert!(u.encode("70000").is_err());
        let b = visitor(json!({"register": "CoilRegister", "offset": 1}), "");
        assert_eq!(b.data_type, DataType::Boolean);
    }

    #[test]
    fn bad_visitors_say_what_is_wrong() {
        let e = Visitor::parse(&json!({"register": "Bogus", "offset": 1}), "").unwrap_err();
        assert!(e.to_string().contains("Bogus"), "{e}");
        let e = Visitor::parse(&json!({"register": "HoldingRegister"}), "").unwrap_err();
        assert!(e.to_string().contains("offset"), "{e}");
        let e = Visitor::parse(
            &json!({"register": "CoilRegister", "offset": 1, "dataType": "float32"}),
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
