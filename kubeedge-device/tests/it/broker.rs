//! The embedded MQTT broker with real clients: mosquitto_pub and mosquitto_sub (Debian's
//! mosquitto-clients) and the event bus (rumqttc).

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kubeedge_device::broker::Broker;
use kubeedge_device::eventbus::EventBus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `mosquitto_sub` on `port` with `args`, printing `topic payload` lines; killed when dropped.
struct Sub(Option<Child>);

impl Sub {
    fn start(port: u16, args: &[&str]) -> Sub {
        Sub(Some(
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-W", "20"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub runs (Debian's mosquitto-clients)"),
        ))
    }

    async fn output(mut self) -> Output {
        let child = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn publish(port: u16, args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(args)
        .output()
        .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lets a just-started mosquitto_sub connect and subscribe.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_and_the_event_bus_talk_through_it() {
    let broker = Broker::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = broker.addr().port();

    // Upstream's `$` topics with `+` levels, QoS 1, from the event bus to mosquitto_sub.
    let delta = Sub::start(
        port,
        &[
            "-q",
            "1",
            "-C",
            "1",
            "-t",
            "$hw/events/device/+/+/twin/update/delta",
        ],
    );
    // A bare `#` must not see `$` topics: this one gets only the plain topic.
    let all = Sub::start(port, &["-C", "1", "-t", "#"]);
    settle().await;
    let (bus, _rx) = EventBus::connect(&broker.url(), "edgecore-test", &[]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.publish(
        "$hw/events/device/default/d1/twin/update/delta",
        br#"{"delta":{"t":"1"}}"#.to_vec(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(port, &["-t", "plain/topic", "-m", "hi"]);
    let out = delta.output().await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"$hw/events/device/default/d1/twin/update/delta {"delta":{"t":"1"}}"#
    );
    let out = all.output().await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "plain/topic hi"
    );

    // From mosquitto_pub to the event bus, which subscribed with a wildcard.
    let (_bus2, mut rx) = EventBus::connect(
        &broker.url(),
        "mapper-test",
        &["$hw/events/device/+/+/twin/update"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(
        port,
        &["-t", "$hw/events/device/default/d2/twin/update", "-m", "{}"],
    );
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.0, "$hw/events/device/default/d2/twin/update");

    // Retained: a late subscriber gets the last retained message; an empty one clears it.
    publish(port, &["-r", "-t", "state/d1", "-m", "online"]);
    let late = Sub::start(port, &["-C", "1", "-t", "state/+"]);
    let out = late.output().await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "state/d1 online"
    );
    publish(port, &["-r", "-n", "-t", "state/d1"]);
    let later = Sub::start(port, &["-C", "1", "-W", "2", "-t", "state/+"]);
    let out = later.output().await;
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{out:?}"
    );

    // A client that dies without DISCONNECT: its will is published.
    let will = Sub::start(port, &["-C", "1", "-t", "wills/#"]);
    let doomed = Sub::start(
        port,
        &[
            "-i",
            "doomed",
            "-t",
            "nothing",
            "--will-topic",
            "wills/doomed",
            "--will-payload",
            "gone",
        ],
    );
    settle().await;
    drop(doomed); // SIGKILL: the kernel closes the socket, no DISCONNECT
    let out = will.output().await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "wills/doomed gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let broker = Broker::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = broker.addr().port();
    let sub = Sub::start(port, &["-C", "1", "-t", "ok"]);
    settle().await;

    // Garbage instead of CONNECT; a packet announcing more than the size limit; a publish to a
    // wildcard topic: each connection is closed by the broker.
    let connect = [
        0x10u8, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'r',
        b'a', b'w', b'1',
    ];
    let oversized = [0x30u8, 0xff, 0xff, 0xff, 0x7f];
    let wildcard_publish = [0x30u8, 0x05, 0x00, 0x03, b'a', b'/', b'#'];
    for (what, bytes) in [
        ("garbage", vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]),
        ("oversized", [&connect[..], &oversized[..]].concat()),
        (
            "wildcard publish",
            [&connect[..], &wildcard_publish[..]].concat(),
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "{what}: the broker kept the connection open"
        );
    }

    // The others were not disturbed.
    publish(port, &["-t", "ok", "-m", "still here"]);
    let out = sub.output().await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok still here");
}
