//! A device protocol of your own: a mapper [`Driver`] served with [`Mapper::start`] to the edge's
//! DMI socket, and the device's twins read back through Rust calls at the edge and from the
//! cloud's API.
//!
//! The "host" protocol here reads the machine itself: property `uptime` from `/proc/uptime`
//! (read-only), property `label` kept by the device (read-write: its desired value is written,
//! then read back). The cloud, the edge, its device module and the mapper run in this process; a
//! DeviceModel and a Device are written to the cloud's API with kube-rs, as typed resources
//! (`kubeedge-core`'s feature `kube`).
//!
//! `cargo run -p kubeedge-examples --example custom_driver`

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use kube::api::{Api, PostParams};
use kubeedge_core::api::devices::{DeviceModelSpec, DeviceSpec};
use kubeedge_core::api::resource::{Device, DeviceModel};
use kubeedge_device::devicetwin::{self, DeviceTwinModule};
use kubeedge_device::mapper::{
    DeviceInfo, Driver, DriverError, Mapper, MapperConfig, PropertyInfo,
};

/// The machine as a device.
struct Host;

impl Driver for Host {
    /// What the device keeps: written values, by property.
    type Conn = HashMap<String, String>;

    fn protocol(&self) -> &str {
        "host"
    }
    async fn connect(&self, _device: &DeviceInfo) -> Result<Self::Conn, DriverError> {
        Ok(HashMap::new())
    }
    async fn read(&self, conn: &mut Self::Conn, p: &PropertyInfo) -> Result<String, DriverError> {
        match p.name.as_str() {
            "uptime" => {
                let text = tokio::fs::read_to_string("/proc/uptime")
                    .await
                    .map_err(|e| DriverError::Unreachable(e.to_string()))?;
                let seconds = text.split_whitespace().next().unwrap_or("0");
                Ok(seconds.to_owned())
            }
            other => conn
                .get(other)
                .cloned()
                .ok_or_else(|| DriverError::Property(format!("{other} was never written"))),
        }
    }
    async fn write(
        &self,
        conn: &mut Self::Conn,
        p: &PropertyInfo,
        value: &str,
    ) -> Result<(), DriverError> {
        if p.name == "uptime" {
            return Err(DriverError::Property("uptime is read-only".into()));
        }
        conn.insert(p.name.clone(), value.to_owned());
        Ok(())
    }
    async fn health(&self, _conn: &mut Self::Conn) -> Result<(), DriverError> {
        Ok(())
    }
}

/// Polls `f` every 100 ms until it gives a value, for at most 30 s.
async fn wait_for<T>(
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("kubeedge-custom-driver-{}", std::process::id()));
    let mut cloud = kubeedge_cloud::Config::new(dir.join("cloud"));
    (cloud.api_addr, cloud.hub_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    (cloud.https_addr, cloud.stream_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let cloud = kubeedge_cloud::CloudCore::start(cloud).await?;
    let mut edge = kubeedge_edge::Config::join(dir.join("edge"), "gateway", &cloud.address());
    edge.token = Some(
        cloud
            .ca()
            .token(Duration::from_secs(600), SystemTime::now()),
    );
    edge.metaserver_addr = "127.0.0.1:0".parse()?;
    let edge = kubeedge_edge::EdgeCore::start(edge).await?;
    let config = devicetwin::Config::new("gateway", dir.join("edge"));
    let devices = DeviceTwinModule::start(config, edge.store().clone(), edge.reports()).await?;

    // The mapper: its own DMI socket, registered at the device module's.
    let config = MapperConfig::new("host-mapper", dir.join("host.sock"), devices.socket());
    let mapper = Mapper::start(Host, config).await?;

    // The DeviceModel and the Device, typed (`kubeedge-core`'s feature `kube`).
    let property = |name: &str, desired: Option<&str>| {
        serde_json::json!({"name": name, "collectCycle": 500, "reportCycle": 500,
            "reportToCloud": true, "desired": desired.map(|v| serde_json::json!({"value": v})),
            "visitors": {"protocolName": "host", "configData": {}}})
    };
    let model: DeviceModelSpec = serde_json::from_value(serde_json::json!({"protocol": "host",
        "properties": [{"name": "uptime", "type": "FLOAT", "accessMode": "ReadOnly"},
                       {"name": "label", "type": "STRING", "accessMode": "ReadWrite"}]}))?;
    let device: DeviceSpec = serde_json::from_value(serde_json::json!({
        "deviceModelRef": {"name": "host"}, "nodeName": "gateway",
        "protocol": {"protocolName": "host"},
        "properties": [property("uptime", None), property("label", Some("kitchen"))]}))?;
    let models: Api<DeviceModel> = Api::default_namespaced(cloud.client().clone());
    let devices_api: Api<Device> = Api::default_namespaced(cloud.client().clone());
    let post = PostParams::default();
    models
        .create(&post, &DeviceModel::new("host", model))
        .await?;
    devices_api
        .create(&post, &Device::new("this-host", device))
        .await?;

    // At the edge, through Rust calls: the mapper's readings in the twin.
    let twins = devices.twins();
    let (up, written) = wait_for("the mapper's readings at the edge", async || {
        let twin = twins.get("default", "this-host").await.ok()?;
        let up = twin.get("uptime")?.actual_value()?.to_owned();
        let label = twin.get("label")?.actual_value()?.to_owned();
        Some((up, label))
    })
    .await?;
    println!("at the edge: uptime {up} s, label {written:?} (desired \"kitchen\")");
    assert_eq!(written, "kitchen");

    // In the cloud: the Device's reported twins.
    let reported = wait_for("the reading in the cloud", async || {
        let device = devices_api.get("this-host").await.ok()?;
        let twins = device.status?.twins;
        let uptime = twins.into_iter().find(|t| t.property_name == "uptime")?;
        uptime.reported.map(|r| r.value)
    })
    .await?;
    println!("in the cloud: uptime {reported} s");

    mapper.stop().await;
    assert!(
        !dir.join("host.sock").exists(),
        "the mapper's socket is removed"
    );
    devices.stop().await;
    edge.stop().await;
    cloud.stop().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
