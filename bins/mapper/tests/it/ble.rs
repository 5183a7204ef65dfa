//! `mapper --protocol bluetooth` against BlueZ's D-Bus API as python-dbusmock's `bluez5` template
//! models it, on a private bus (there is no Bluetooth controller on these machines), registered
//! with edgecore's device module over DMI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_core::store::{self, Store};
use kubeedge_device::devicetwin::{self, DEVICES, DeviceTwinModule, MODELS};
use serde_json::{Value, json};

/// Debian's python3: it has the `dbus` and `dbusmock` modules from python3-dbusmock.
const PYTHON: &str = "/usr/bin/python3";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Adds an adapter, a heart-rate sensor with a notifying characteristic and a writable switch.
/// The device is re-added with Connect and Disconnect that update `Connected` and
/// `ServicesResolved`, as BlueZ does once the link is up and GATT is discovered (the template's
/// own leave both false).
const SETUP: &str = r#"
import dbus, sys, time
bus = dbus.SystemBus()
for _ in range(100):
    try:
        mock = dbus.Interface(bus.get_object("org.bluez", "/org/bluez"), "org.bluez.Mock")
        mock.AddAdapter("hci0", "edge-node")
        break
    except dbus.exceptions.DBusException:
        time.sleep(0.1)
else:
    sys.exit("bluez mock did not come up")
dev = mock.AddDevice("hci0", "11:22:33:44:55:66", "Heart Rate Sensor")
m = lambda path: dbus.Interface(bus.get_object("org.bluez", path), "org.freedesktop.DBus.Mock")
D = "org.bluez.Device1"
props = dbus.Interface(bus.get_object("org.bluez", dev), "org.freedesktop.DBus.Properties").GetAll(D)
link = "self.UpdateProperties('%s', {'Connected': dbus.Boolean(%s), 'ServicesResolved': dbus.Boolean(%s)})"
m("/").RemoveObject(dev)
m("/").AddObject(dev, D, props, [("Connect", "", "", link % (D, True, True)),
                                 ("Disconnect", "", "", link % (D, False, False))])
C = "org.bluez.GattCharacteristic1"
svc = dev + "/service0001"
m("/").AddObject(svc, "org.bluez.GattService1",
    {"UUID": "0000180d-0000-1000-8000-00805f9b34fb", "Primary": True, "Device": dbus.ObjectPath(dev)},
    # dbusmock lists an interface without methods after the child nodes in its introspection
    # XML, which BlueZ never does and bluez-async's parser refuses: give it one.
    [("Unused", "", "", "")])
methods = [
    ("ReadValue", "a{sv}", "ay", "ret = self.Get('%s', 'Value')" % C),
    ("WriteValue", "aya{sv}", "", "self.UpdateProperties('%s', {'Value': dbus.Array(args[0], signature='y')})" % C),
    ("StartNotify", "", "", "self.UpdateProperties('%s', {'Notifying': dbus.Boolean(True)})" % C),
    ("StopNotify", "", "", "self.UpdateProperties('%s', {'Notifying': dbus.Boolean(False)})" % C),
]
def char(name, uuid, flags, value):
    m("/").AddObject(svc + "/" + name, C,
        {"UUID": uuid, "Service": dbus.ObjectPath(svc), "Flags": dbus.Array(flags, signature="s"),
         "Value": dbus.Array(value, signature="y"), "Notifying": False}, methods)
char("char0002", "00002a37-0000-1000-8000-00805f9b34fb", ["read", "notify"], [0x00, 72])
char("char0003", "0000fff1-0000-1000-8000-00805f9b34fb", ["read", "write"], [0x00])
print("ready", flush=True)
"#;

/// `python3 - PATH PROPERTY [VALUE...]`: prints a characteristic's property, or sets its Value
/// (emitting PropertiesChanged, as a notification does).
const CHAR: &str = r#"
import dbus, sys
bus = dbus.SystemBus()
path = "/org/bluez/hci0/dev_11_22_33_44_55_66/service0001/" + sys.argv[1]
C = "org.bluez.GattCharacteristic1"
if len(sys.argv) > 3:
    mock = dbus.Interface(bus.get_object("org.bluez", path), "org.freedesktop.DBus.Mock")
    mock.UpdateProperties(C, {"Value": dbus.Array([int(b) for b in sys.argv[3:]], signature="y")})
else:
    props = dbus.Interface(bus.get_object("org.bluez", path), "org.freedesktop.DBus.Properties")
    v = props.Get(C, sys.argv[2])
    print(list(int(b) for b in v) if isinstance(v, dbus.Array) else bool(v))
"#;

fn python(bus: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .output()
        .expect("Debian's python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn model() -> Value {
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "hr-sensor", "namespace": "default"},
        "spec": {"protocol": "bluetooth", "properties": [
            {"name": "heart-rate", "type": "INT", "accessMode": "ReadOnly"},
            {"name": "switch", "type": "STRING", "accessMode": "ReadWrite"}]}})
}

fn device(name: &str, mac: &str) -> Value {
    let prop = |name: &str, visitor: Value| {
        json!({"name": name, "collectCycle": 300, "reportCycle": 500, "reportToCloud": true,
            "visitors": {"protocolName": "bluetooth", "configData": visitor}})
    };
    json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "hr-sensor"}, "nodeName": "e1",
            "protocol": {"protocolName": "bluetooth", "configData": {"macAddress": mac}},
            "properties": [
                prop("heart-rate", json!({"characteristicUUID": "2a37",
                    "dataConverter": {"startIndex": 1, "endIndex": 1}})),
                prop("switch", json!({"characteristicUUID": "fff1",
                    "dataWrite": {"ON": "01", "OFF": "00"},
                    "dataConverter": {"startIndex": 0, "endIndex": 0}}))]}})
}

/// What the device module sent up, by resource.
type Sent = Arc<Mutex<Vec<(String, Value)>>>;

fn reported(sent: &Sent, device: &str, property: &str) -> Option<String> {
    let resource = format!("device/default/{device}/twin/edge_updated");
    let sent = sent.lock().unwrap();
    sent.iter().rev().find_map(|(r, c)| {
        (r == &resource)
            .then(|| {
                c["twin"][property]["actual"]["value"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten()
    })
}

fn state(sent: &Sent, device: &str) -> Option<(String, String)> {
    let resource = format!("device/default/{device}/state/update");
    let sent = sent.lock().unwrap();
    sent.iter()
        .rev()
        .find(|(r, _)| r == &resource)
        .map(|(_, c)| {
            (
                c["device"]["state"].as_str().unwrap_or("").to_owned(),
                c["device"]["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
}

async fn wait_file(path: &Path) {
    eventually(10, "the bus socket", async || path.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_device_reports_notifies_and_takes_desired_values() {
    let dir = TempDir(std::env::temp_dir().join(format!("kubeedge-ble-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("dmi")).unwrap();
    let sock = dir.0.join("bus.sock");
    let bus = format!("unix:path={}", sock.display());
    let _daemon = Proc(
        Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={bus}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon runs (Debian's dbus-daemon)"),
    );
    wait_file(&sock).await;
    let _bluez = Proc(
        Command::new(PYTHON)
            .args(["-m", "dbusmock", "--system", "-t", "bluez5"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3-dbusmock runs"),
    );
    assert_eq!(python(&bus, SETUP, &[]), "ready");

    // edgecore's device module, with a metastore of its own.
    let store = Store::open(&dir.0.join("edge.redb"), store::Config::default()).unwrap();
    let (uplink, mut up) = tokio::sync::mpsc::channel::<kubeedge_core::message::Message>(256);
    let sent: Sent = Arc::default();
    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            while let Some(m) = up.recv().await {
                sent.lock().unwrap().push((m.route.resource, m.content));
            }
        })
    };
    let twin = DeviceTwinModule::start(
        devicetwin::Config::new("e1", dir.0.join("dmi")),
        store.clone(),
        uplink,
    )
    .await
    .unwrap();

    // The mapper binary, on the private bus.
    let _mapper = Proc(
        Command::new(env!("CARGO_BIN_EXE_mapper"))
            .args(["--protocol", "bluetooth", "--edgecore-socket"])
            .arg(twin.socket())
            .arg("--socket")
            .arg(dir.0.join("dmi/bluetooth.sock"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    store.create(MODELS, Some("default"), model()).unwrap();
    store
        .create(DEVICES, Some("default"), device("hr1", "11:22:33:44:55:66"))
        .unwrap();
    store
        .create(
            DEVICES,
            Some("default"),
            device("ghost", "66:55:44:33:22:11"),
        )
        .unwrap();

    // Read over GATT: byte 1 of the measurement.
    eventually(30, "hr1's heart rate reported", async || {
        reported(&sent, "hr1", "heart-rate").as_deref() == Some("72")
    })
    .await;
    // The characteristic notifies: the mapper subscribed, and a notification reaches the cloud.
    eventually(10, "notifications switched on", async || {
        python(&bus, CHAR, &["char0002", "Notifying"]) == "True"
    })
    .await;
    python(&bus, CHAR, &["char0002", "Value", "0", "91"]);
    eventually(10, "the notified value reported", async || {
        reported(&sent, "hr1", "heart-rate").as_deref() == Some("91")
    })
    .await;
    assert_eq!(state(&sent, "hr1").unwrap().0, "online");

    // A desired value: `ON` is written as the byte 01 (dataWrite), and read back.
    let mut d: Value = store.get(DEVICES, Some("default"), "hr1").unwrap();
    d["spec"]["properties"][1]["desired"] = json!({"value": "ON"});
    store.update(DEVICES, Some("default"), "hr1", d).unwrap();
    eventually(15, "the switch written over GATT", async || {
        python(&bus, CHAR, &["char0003", "Value"]) == "[1]"
    })
    .await;

    // A device BlueZ does not know and a scan does not find: offline, with the reason.
    eventually(30, "ghost reported offline", async || {
        state(&sent, "ghost").is_some_and(|(s, why)| s == "offline" && why.contains("not found"))
    })
    .await;

    drop(twin);
    collector.abort();
}
