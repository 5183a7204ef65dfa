//! An appliance in one process: the cloud (embedded control plane), an edge joined to it with a
//! token, and a device whose desired value is set and read back through Rust calls; then all of
//! it stopped, with its ports free and the edge's store opened again at once.
//!
//! `cargo run -p kubeedge-examples --example appliance`

use std::time::{Duration, SystemTime};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kubeedge_device::devicetwin::{self, DeviceTwinModule};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("kubeedge-appliance-{}", std::process::id()));
    let mut cloud = kubeedge_cloud::Config::new(dir.join("cloud"));
    (cloud.api_addr, cloud.hub_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    (cloud.https_addr, cloud.stream_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let cloud = kubeedge_cloud::CloudCore::start(cloud).await?;

    let mut edge = kubeedge_edge::Config::join(dir.join("edge"), "appliance", &cloud.address());
    edge.token = Some(
        cloud
            .ca()
            .token(Duration::from_secs(600), SystemTime::now()),
    );
    edge.metaserver_addr = "127.0.0.1:0".parse()?;
    let edge = kubeedge_edge::EdgeCore::start(edge).await?;
    let config = devicetwin::Config::new("appliance", dir.join("edge"));
    let devices = DeviceTwinModule::start(config, edge.store().clone(), edge.reports()).await?;

    // A DeviceModel and a Device on the node, written to the cloud's API with kube-rs.
    for (kind, spec) in [
        (
            "DeviceModel",
            serde_json::json!({"protocol": "modbus",
            "properties": [{"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}]}),
        ),
        (
            "Device",
            serde_json::json!({"deviceModelRef": {"name": "sensor"}, "nodeName": "appliance",
            "protocol": {"protocolName": "modbus"}, "properties": [{"name": "temperature"}]}),
        ),
    ] {
        let gvk = GroupVersionKind::gvk("devices.kubeedge.io", "v1beta1", kind);
        let api: Api<DynamicObject> = Api::namespaced_with(
            cloud.client().clone(),
            "default",
            &ApiResource::from_gvk(&gvk),
        );
        let obj = DynamicObject::new("sensor", &ApiResource::from_gvk(&gvk))
            .data(serde_json::json!({"spec": spec}));
        api.create(&PostParams::default(), &obj).await?;
    }

    // The device's twin at the edge: a desired value set and read back.
    let twins = devices.twins();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while twins.get("default", "sensor").await.is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err("the device never reached the edge".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    twins
        .set_desired("default", "sensor", [("temperature", "25")])
        .await?;
    let twin = twins.get("default", "sensor").await?;
    println!(
        "desired temperature at the edge: {:?}",
        twin["temperature"].expected_value()
    );
    assert_eq!(twin["temperature"].expected_value(), Some("25"));

    // Everything stopped: the ports are free and the edge's store opens again at once.
    let metaserver = edge.metaserver_addr();
    devices.stop().await;
    edge.stop().await;
    cloud.stop().await;
    std::net::TcpListener::bind(metaserver)?;
    kubeedge_edge::metastore::MetaStore::open(&dir.join("edge").join("edge.redb"))?;
    println!("stopped: {metaserver} is free and the edge's store reopened");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
