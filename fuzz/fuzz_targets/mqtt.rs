//! The embedded broker's packet path: MQTT packets decoded as the broker reads them, topics and
//! filters checked and matched as it routes them.
#![no_main]

use bytes::BytesMut;
use kubeedge_device::broker::{MAX_PACKET, topic_matches, valid_filter};
use libfuzzer_sys::fuzz_target;
use rumqttc::Packet;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut filters = Vec::new();
    let mut topics = Vec::new();
    while let Ok(packet) = Packet::read(&mut buf, MAX_PACKET) {
        match packet {
            Packet::Subscribe(s) => filters.extend(s.filters.into_iter().map(|f| f.path)),
            Packet::Unsubscribe(u) => filters.extend(u.topics),
            Packet::Publish(p) => topics.push(p.topic),
            Packet::Connect(c) => {
                if let Some(will) = c.last_will {
                    topics.push(will.topic);
                }
            }
            _ => {}
        }
    }
    for f in &filters {
        let valid = valid_filter(f);
        for t in &topics {
            let matched = topic_matches(t, f);
            if !valid {
                continue;
            }
            if f == "#" && !t.starts_with('$') {
                assert!(matched, "# matches {t:?}");
            }
        }
    }
});
