//! Devices end to end: the embedded control plane, an edgecore with its device module, the Modbus
//! mapper over DMI, a pymodbus simulator, mosquitto, kubectl and mosquitto_sub.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubeedge_device::devicetwin::{self, DeviceTwinModule};
use kubeedge_device::mapper::{Mapper, MapperConfig, modbus::Modbus};
use kubeedge_edge::EdgeCore;
use serde_json::Value;
use tokio_modbus::client::{Reader, Writer};

use crate::common::*;

/// A child process killed (and reaped) when dropped.
pub(crate) struct Peer(pub(crate) Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn wait_port(port: u16, what: &str) {
    eventually(20, what, async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

pub(crate) fn python() -> String {
    std::env::var("KUBEEDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// pymodbus 3.16: holding registers 0-3 (100, 200, 300, 400) and a float32 21.5 at 10-11.
const MODBUS_SERVER: &str = r#"
import asyncio, logging, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice, DataType

async def main():
    holding = [SimData(0, values=[100, 200, 300, 400], datatype=DataType.REGISTERS),
               SimData(10, values=21.5, datatype=DataType.FLOAT32)]
    coils = [SimData(0, values=[False] * 8, datatype=DataType.BITS)]
    discrete = [SimData(0, values=[False] * 8, datatype=DataType.BITS)]
    inputs = [SimData(0, values=[7, 8, 9, 10], datatype=DataType.REGISTERS)]
    device = SimDevice(1, simdata=(coils, discrete, holding, inputs))
    server = ModbusTcpServer([device], address=("127.0.0.1", int(sys.argv[1])))
    await server.serve_forever()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main())
"#;

fn start_modbus(dir: &TempDir, port: u16) -> Peer {
    let script = dir.0.join("mb_server.py");
    std::fs::write(&script, MODBUS_SERVER).unwrap();
    Peer(
        Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the pymodbus simulator starts (KUBEEDGE_TEST_PYTHON with pymodbus 3.16.1)"),
    )
}

fn start_mosquitto(dir: &TempDir, port: u16) -> Peer {
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        ),
    )
    .unwrap();
    Peer(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (Debian's mosquitto package)"),
    )
}

async fn modbus_client(port: u16) -> tokio_modbus::client::Context {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1))
        .await
        .unwrap()
}

pub(crate) fn device_json(dir: &TempDir, name: &str) -> Value {
    let out = kubectl(dir, &["get", "device", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

pub(crate) fn reported(device: &Value, property: &str) -> Option<String> {
    device["status"]["twins"]
        .as_array()?
        .iter()
        .find(|t| t["propertyName"] == property)?["reported"]["value"]
        .as_str()
        .map(str::to_owned)
}

fn manifests(modbus_port: u16, dead_port: u16) -> String {
    let device = |name: &str, protocol: &str, port: u16, offset: u32| {
        format!(
            r#"---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: {name}
  namespace: default
spec:
  deviceModelRef:
    name: thermometer
  nodeName: e1
  protocol:
    protocolName: {protocol}
    configData:
      ip: 127.0.0.1
      port: {port}
      slaveID: 1
  properties:
  - name: temperature
    collectCycle: 300
    reportCycle: 1000
    reportToCloud: true
    visitors:
      protocolName: {protocol}
      configData:
        register: HoldingRegister
        offset: {offset}
        dataType: int16
  - name: humidity
    collectCycle: 300
    reportCycle: 1000
    reportToCloud: true
    visitors:
      protocolName: {protocol}
      configData:
        register: HoldingRegister
        offset: 10
        dataType: float32
"#
        )
    };
    let model = r#"apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: thermometer
  namespace: default
spec:
  protocol: modbus
  properties:
  - name: temperature
    type: INT
    accessMode: ReadWrite
  - name: humidity
    type: FLOAT
    accessMode: ReadOnly
"#;
    [
        model.to_owned(),
        device("thermo", "modbus", modbus_port, 0),
        device("badreg", "modbus", modbus_port, 500),
        device("gone", "modbus", dead_port, 0),
        device("mystery", "foo", modbus_port, 0),
    ]
    .concat()
}

pub(crate) fn ready_message(device: &Value) -> String {
    device["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// edge `e1`'s device module (DMI under `dir/dmi`, mappers given 2 s to register), its reports
/// carried by edgehub.
pub(crate) async fn start_twin(
    dir: &TempDir,
    edge: &EdgeCore,
    mqtt_url: Option<String>,
) -> DeviceTwinModule {
    let mut twin_config = devicetwin::Config::new("e1", dir.0.join("dmi"));
    twin_config.mqtt_url = mqtt_url;
    twin_config.mapper_grace = Duration::from_secs(2);
    DeviceTwinModule::start(twin_config, edge.store().clone(), edge.reports())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_device_reports_follows_and_takes_desired_values() {
    let dir = TempDir::new("devices");
    let (mb_port, mqtt_port, dead_port) = (free_port(), free_port(), free_port());
    let _modbus = start_modbus(&dir, mb_port);
    let _mosquitto = start_mosquitto(&dir, mqtt_port);
    wait_port(mqtt_port, "mosquitto").await;
    wait_port(mb_port, "the Modbus simulator").await;

    let cloud_core = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let (hub_addr, https_addr) = (cloud_core.hub_addr(), cloud_core.https_addr());
    let edge = EdgeCore::start(edge_config(&dir, &cloud_core))
        .await
        .unwrap();
    let twin = start_twin(&dir, &edge, Some(format!("tcp://127.0.0.1:{mqtt_port}"))).await;
    let mapper = Mapper::start(
        Modbus,
        MapperConfig::new(
            "modbus-mapper",
            dir.0.join("dmi/modbus.sock"),
            twin.socket(),
        ),
    )
    .await
    .unwrap();

    // The CRDs are there from the start: kubectl applies a model and four devices.
    let file = dir.0.join("devices.yaml");
    std::fs::write(&file, manifests(mb_port, dead_port)).unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);

    // Reported values reach the Device status (register 0 = 100, float32 at 10 = 21.5).
    eventually(30, "thermo's reported values in the cloud", async || {
        let d = device_json(&dir, "thermo");
        reported(&d, "temperature").as_deref() == Some("100")
            && reported(&d, "humidity").as_deref() == Some("21.5")
    })
    .await;
    let d = device_json(&dir, "thermo");
    let twins = d["status"]["twins"].as_array().unwrap();
    let twin0 = twins
        .iter()
        .find(|t| t["propertyName"] == "temperature")
        .unwrap();
    assert!(
        twin0["reported"]["metadata"]["timestamp"]
            .as_str()
            .is_some(),
        "{d}"
    );
    assert_eq!(twin0["reported"]["metadata"]["type"], "int", "{d}");
    // And in the device's DeviceStatus, owned by the Device, where upstream keeps them.
    eventually(10, "thermo's DeviceStatus", async || {
        let out = kubectl(
            &dir,
            &[
                "get",
                "devicestatus",
                "thermo",
                "-o",
                "json",
                "--ignore-not-found",
            ],
        );
        let ds: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        reported(&ds, "temperature").as_deref() == Some("100")
            && ds["metadata"]["ownerReferences"][0]["name"] == "thermo"
    })
    .await;
    assert!(mapper.registered());

    // The register changes on the device: the status follows.
    let mut client = modbus_client(mb_port).await;
    client.write_single_register(0, 150).await.unwrap().unwrap();
    eventually(10, "the changed register in the cloud", async || {
        reported(&device_json(&dir, "thermo"), "temperature").as_deref() == Some("150")
    })
    .await;

    // Bad input stays on its device: a wrong register address, an unreachable device, a protocol
    // no mapper serves; each says why, and thermo goes on.
    eventually(30, "the bad devices' conditions", async || {
        let bad = device_json(&dir, "badreg");
        let gone = device_json(&dir, "gone");
        let mystery = device_json(&dir, "mystery");
        bad["status"]["state"] == "unhealthy"
            && ready_message(&bad).contains("illegal data address")
            && gone["status"]["state"] == "offline"
            && ready_message(&gone).contains("unreachable")
            && mystery["status"]["state"] == "unknown"
            && ready_message(&mystery).contains("no mapper for protocol \"foo\"")
    })
    .await;
    assert_eq!(
        reported(&device_json(&dir, "badreg"), "humidity").as_deref(),
        Some("21.5"),
        "the readable property of a device with a bad one is still reported"
    );

    // A desired value: mosquitto_sub sees upstream's delta, the register is written, the reported
    // value follows.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port.to_string(),
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .args(["-t", "$hw/events/device/default/thermo/twin/update/delta"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    kubectl(
        &dir,
        &[
            "patch",
            "device",
            "thermo",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/spec/properties/0/desired","value":{"value":"42"}}]"#,
        ],
    );
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "no delta within 30 s");
    let delta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(delta["delta"]["temperature"], "42", "{delta}");
    assert_eq!(
        delta["twin"]["temperature"]["expected"]["value"], "42",
        "{delta}"
    );
    assert!(
        delta["event_id"].is_string() && delta["timestamp"].is_i64(),
        "{delta}"
    );
    eventually(
        15,
        "the desired value written to the register",
        async || {
            let r = client.read_holding_registers(0, 1).await.unwrap().unwrap();
            r == [42]
        },
    )
    .await;
    eventually(10, "the written value reported", async || {
        reported(&device_json(&dir, "thermo"), "temperature").as_deref() == Some("42")
    })
    .await;

    // Offline: the cloud goes away, the mapper keeps collecting, the latest value arrives after
    // the reconnect.
    cloud_core.stop().await;
    client
        .write_single_register(10, 0x41f0)
        .await
        .unwrap()
        .unwrap(); // float32 30.0 (high word)
    client.write_single_register(11, 0).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cloud_core = cloud(&dir, &hub_addr.to_string(), &https_addr.to_string()).await;
    eventually(40, "the value collected offline in the cloud", async || {
        reported(&device_json(&dir, "thermo"), "humidity").as_deref() == Some("30")
    })
    .await;

    drop(mapper);
    twin.stop().await;
    edge.stop().await;
    cloud_core.stop().await;
}

/// A vendor's code reads and sets twins through Rust calls only: no MQTT client, no mapper.
#[tokio::test(flavor = "multi_thread")]
async fn twins_are_read_and_set_through_rust_calls() {
    let dir = TempDir::new("twin-api");
    let cloud_core = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let edge = EdgeCore::start(edge_config(&dir, &cloud_core))
        .await
        .unwrap();
    let module = start_twin(&dir, &edge, None).await;
    let twins = module.twins();
    let mut changes = twins.subscribe();
    let file = dir.0.join("devices.yaml");
    std::fs::write(&file, manifests(free_port(), free_port())).unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    eventually(30, "thermo at the edge", async || {
        twins.get("default", "thermo").await.is_ok()
    })
    .await;

    // A reported value, as a mapper would send it: in the twin, then in the cloud's status.
    let changed = twins
        .report("default", "thermo", [("temperature", "21")])
        .await
        .unwrap();
    assert_eq!(changed["temperature"].actual_value(), Some("21"));
    let got = twins.get("default", "thermo").await.unwrap();
    assert_eq!(got["temperature"].actual_value(), Some("21"));
    eventually(30, "the reported value in the cloud", async || {
        reported(&device_json(&dir, "thermo"), "temperature").as_deref() == Some("21")
    })
    .await;

    // A desired value: in the twin, announced to subscribers with before and after.
    twins
        .set_desired("default", "thermo", [("temperature", "25")])
        .await
        .unwrap();
    let got = twins.get("default", "thermo").await.unwrap();
    assert_eq!(got["temperature"].expected_value(), Some("25"));
    assert_eq!(got["temperature"].actual_value(), Some("21"));
    let change = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let c = changes.recv().await.unwrap();
            if c.name == "thermo"
                && c.document.get("temperature").is_some_and(|d| {
                    d.current.as_ref().and_then(|t| t.expected_value()) == Some("25")
                })
            {
                return c;
            }
        }
    })
    .await
    .expect("the desired value announced");
    assert_eq!(change.namespace, "default");

    // The edge's own API serves its Devices and DeviceModels (kubectl on the metaserver).
    let server = format!("http://{}", edge.metaserver_addr());
    let listed = kubectl_server(&dir, &server, &["get", "devices", "-A", "-o", "name"]);
    assert!(
        listed.contains("device.devices.kubeedge.io/thermo"),
        "{listed}"
    );
    let model = kubectl_server(
        &dir,
        &server,
        &[
            "get",
            "devicemodel",
            "thermometer",
            "-o",
            "jsonpath={.spec.protocol}",
        ],
    );
    assert_eq!(model, "modbus");

    // A device this node does not have: upstream's 404, as an error value.
    let err = twins.get("default", "nope").await.unwrap_err();
    assert!(
        matches!(err, kubeedge_device::Error::Twin { code: 404, .. }),
        "{err}"
    );
    let socket = module.socket().to_owned();
    module.stop().await;
    assert!(!socket.exists(), "the DMI socket is removed");
    assert!(matches!(
        twins.get("default", "thermo").await,
        Err(kubeedge_device::Error::Stopped)
    ));
    edge.stop().await;
}
