//! The beehive message as it arrives on the sync link, then through both sync sessions.
#![no_main]

use kubeedge_core::message::Message;
use kubeedge_core::sync::stamp::WallClock;
use kubeedge_core::sync::{cloud, edge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::from_json(data, 1 << 20) else {
        return;
    };
    let again = Message::from_json(&message.to_json(), 1 << 20).expect("what we encode decodes");
    assert_eq!(again, message, "a decoded message survives a round trip");

    let now = std::time::Instant::now();
    let mut e = edge::Session::new(
        edge::Config::default(),
        Vec::new(),
        1,
        WallClock::new(now, 0),
        now,
    );
    e.connected(now, true);
    e.handle_frame(now, message.clone());
    while e.poll_transmit(now).is_some() {}
    while e.poll_event().is_some() {}

    let mut c = cloud::Session::new(
        "e1",
        cloud::Config::default(),
        1,
        WallClock::new(now, 0),
        now,
    );
    c.connected(now, true);
    let _ = c.handle_frame(now, message);
    while c.poll_transmit(now).is_some() {}
    while c.poll_event().is_some() {}
});
