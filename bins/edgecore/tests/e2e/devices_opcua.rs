//! OPC-UA devices end to end: the embedded control plane, an edgecore with its device module, the
//! OPC-UA mapper over DMI, an asyncua server, kubectl, and an asyncua client checking the server.

use std::process::{Command, Stdio};

use kubeedge_device::mapper::{Mapper, MapperConfig, opcua::OpcUa};
use kubeedge_edge::EdgeCore;

use crate::common::*;
use crate::devices::{Peer, device_json, python, ready_message, reported, start_twin, wait_port};

/// asyncua 2.1: no security, anonymous; `ns=2;s=Temperature` (Double 21.5, writable),
/// `ns=2;s=Counter` (Int32, +1 every second).
const UA_SERVER: &str = r#"
import asyncio, logging, sys
from asyncua import Server, ua

async def main():
    port = int(sys.argv[1])
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/freeopcua/server/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:test:kubeedge")
    dev = await server.nodes.objects.add_object(idx, "Device1")
    temp = await dev.add_variable(ua.NodeId("Temperature", idx), f"{idx}:Temperature", 21.5)
    cnt = await dev.add_variable(ua.NodeId("Counter", idx), f"{idx}:Counter", 0, varianttype=ua.VariantType.Int32)
    await temp.set_writable()
    async with server:
        n = 0
        while True:
            await asyncio.sleep(1)
            n += 1
            await cnt.write_value(n, ua.VariantType.Int32)

logging.basicConfig(level=logging.ERROR)
asyncio.run(main())
"#;

/// Reads a node with asyncua's own client: what the server holds, not what the mapper says.
const UA_READ: &str = r#"
import asyncio, sys
from asyncua import Client

async def main():
    async with Client(url=f"opc.tcp://127.0.0.1:{sys.argv[1]}/freeopcua/server/", timeout=4) as c:
        print(await c.get_node(sys.argv[2]).read_value())

asyncio.run(main())
"#;

fn manifests(port: u16, dead_port: u16) -> String {
    let device = |name: &str, port: u16, temperature_node: &str| {
        format!(
            r#"---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: {name}
  namespace: default
spec:
  deviceModelRef:
    name: ua-sensor
  nodeName: e1
  protocol:
    protocolName: opcua
    configData:
      url: opc.tcp://127.0.0.1:{port}/freeopcua/server/
      timeout: 3000
  properties:
  - name: temperature
    collectCycle: 300
    reportCycle: 1000
    reportToCloud: true
    visitors:
      protocolName: opcua
      configData:
        nodeID: "{temperature_node}"
  - name: counter
    collectCycle: 300
    reportCycle: 1000
    reportToCloud: true
    visitors:
      protocolName: opcua
      configData:
        nodeID: ns=2;s=Counter
"#
        )
    };
    let model = r#"apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: ua-sensor
  namespace: default
spec:
  protocol: opcua
  properties:
  - name: temperature
    type: DOUBLE
    accessMode: ReadWrite
  - name: counter
    type: INT
    accessMode: ReadOnly
"#;
    [
        model.to_owned(),
        device("ua1", port, "ns=2;s=Temperature"),
        device("ua-badnode", port, "ns=2;s=Pressure"),
        device("ua-gone", dead_port, "ns=2;s=Temperature"),
    ]
    .concat()
}

async fn server_value(dir: &TempDir, port: u16, node: &str) -> String {
    let script = dir.0.join("ua_read.py");
    std::fs::write(&script, UA_READ).unwrap();
    let node = node.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .arg(node)
            .stderr(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn counter(dir: &TempDir) -> Option<i64> {
    reported(&device_json(dir, "ua1"), "counter")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn opcua_device_reports_follows_and_takes_desired_values() {
    let dir = TempDir::new("opcua");
    let (ua_port, dead_port) = (free_port(), free_port());
    let script = dir.0.join("ua_server.py");
    std::fs::write(&script, UA_SERVER).unwrap();
    let _server = Peer(
        Command::new(python())
            .arg(&script)
            .arg(ua_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the asyncua server starts (KUBEEDGE_TEST_PYTHON with asyncua 2.1.0)"),
    );

    let cloud_core = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let edge = EdgeCore::start(edge_config(&dir, &cloud_core))
        .await
        .unwrap();
    let twin = start_twin(&dir, &edge, None).await;
    let mapper = Mapper::start(
        OpcUa::new(dir.0.join("opcua-pki")),
        MapperConfig::new("opcua-mapper", dir.0.join("dmi/opcua.sock"), twin.socket()),
    )
    .await
    .unwrap();
    // The server builds its address space before it opens the port (about 3 s).
    wait_port(ua_port, "the asyncua server").await;

    let file = dir.0.join("devices.yaml");
    std::fs::write(&file, manifests(ua_port, dead_port)).unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);

    // Reported values reach the Device status.
    eventually(40, "ua1's reported values in the cloud", async || {
        let d = device_json(&dir, "ua1");
        reported(&d, "temperature").as_deref() == Some("21.5") && counter(&dir).is_some()
    })
    .await;
    let d = device_json(&dir, "ua1");
    let twin0 = d["status"]["twins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["propertyName"] == "temperature")
        .unwrap();
    assert_eq!(twin0["reported"]["metadata"]["type"], "double", "{d}");
    assert_eq!(d["status"]["state"], "online", "{d}");

    // The counter changes on the server every second (delivered by the subscription): the
    // status follows.
    let first = counter(&dir).unwrap();
    eventually(15, "the counter moving on in the cloud", async || {
        counter(&dir).is_some_and(|c| c >= first + 2)
    })
    .await;

    // Bad input stays on its device: a node the server does not have, a server that is not
    // there; each says why, and ua1 goes on.
    eventually(40, "the bad devices' conditions", async || {
        let bad = device_json(&dir, "ua-badnode");
        let gone = device_json(&dir, "ua-gone");
        bad["status"]["state"] == "unhealthy"
            && ready_message(&bad).contains("BadNodeIdUnknown")
            && gone["status"]["state"] == "offline"
            && ready_message(&gone).contains("unreachable")
    })
    .await;
    assert!(
        reported(&device_json(&dir, "ua-badnode"), "counter").is_some(),
        "the readable property of a device with a bad one is still reported"
    );

    // A desired value reaches the server (as a Double, the variable's type), and the reported
    // value follows.
    kubectl(
        &dir,
        &[
            "patch",
            "device",
            "ua1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/spec/properties/0/desired","value":{"value":"30.25"}}]"#,
        ],
    );
    eventually(20, "the desired value written to the server", async || {
        server_value(&dir, ua_port, "ns=2;s=Temperature").await == "30.25"
    })
    .await;
    eventually(10, "the written value reported", async || {
        reported(&device_json(&dir, "ua1"), "temperature").as_deref() == Some("30.25")
    })
    .await;

    drop(mapper);
    twin.stop().await;
    edge.stop().await;
    cloud_core.stop().await;
}
