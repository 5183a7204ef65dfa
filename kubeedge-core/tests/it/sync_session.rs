//! Session behaviours pinned one by one (each was a bug found in review).

use std::time::{Duration, Instant};

use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::sync::stamp::WallClock;
use kubeedge_core::sync::{InventoryChunk, ProtocolError, cloud, edge};

fn clock(now: Instant) -> WallClock {
    WallClock::new(now, 1_700_000_000_000)
}

fn object(key: &str, rv: u64, op: Operation) -> Message {
    Message::new(
        "",
        0,
        Route::new(names::EDGECONTROLLER, names::RESOURCE_GROUP, op, key),
    )
    .with_resource_version(rv.to_string())
    .with_content(serde_json::json!({"kind": "Pod"}))
}

fn drain<T>(f: impl FnMut() -> Option<T>) -> Vec<T> {
    std::iter::from_fn(f).collect()
}

/// A connected, resynced cloud session (negotiated, empty inventory already received).
fn cloud_session(now: Instant) -> cloud::Session {
    let mut c = cloud::Session::new("e1", cloud::Config::default(), 1, clock(now), now);
    c.connected(now, false);
    assert_eq!(c.poll_event(), Some(cloud::Event::ResyncNeeded));
    c.resync(Vec::new());
    c
}

fn ack_all(c: &mut cloud::Session, now: Instant, sent: &[Message]) {
    for m in sent {
        c.handle_frame(now, m.response("ack", 0, serde_json::json!("OK")))
            .unwrap();
    }
}

#[test]
fn messages_outside_reliable_sync_are_sent_once_and_not_coalesced() {
    let now = Instant::now();
    let mut c = cloud_session(now);
    let membership = || {
        Message::new(
            "",
            0,
            Route::new(
                names::DEVICECONTROLLER,
                names::TWIN_GROUP,
                Operation::Update,
                "node/e1/membership",
            ),
        )
        .with_content(serde_json::json!({"added_devices": []}))
    };
    c.enqueue(membership()).unwrap();
    c.enqueue(membership()).unwrap();
    let sent = drain(|| c.poll_transmit(now));
    assert_eq!(sent.len(), 2, "both go out, uncoalesced");
    assert_eq!(sent[0].route.resource, "membership", "trimmed to edge form");
    assert_ne!(sent[0].header.id, sent[1].header.id);
    // never retransmitted, and they hold no window slot
    let later = now + Duration::from_secs(120);
    c.handle_frame(
        later,
        Message::new(
            "k",
            0,
            Route::new("websocket", "resource", Operation::Keepalive, "node"),
        ),
    )
    .unwrap();
    assert!(drain(|| c.poll_transmit(later)).is_empty());
    assert!(c.is_idle());
}

#[test]
fn resync_cancels_queued_upserts_of_keys_no_longer_desired() {
    let now = Instant::now();
    let mut c = cloud_session(now);
    // the edge holds a@2
    c.enqueue(object("default/pod/a", 2, Operation::Insert))
        .unwrap();
    let sent = drain(|| c.poll_transmit(now));
    ack_all(&mut c, now, &sent);
    // a@3 is queued, then the link drops before it goes out; b@5 (never held) is queued too
    c.disconnected();
    c.enqueue(object("default/pod/a", 3, Operation::Update))
        .unwrap();
    c.enqueue(object("default/pod/b", 5, Operation::Insert))
        .unwrap();
    c.connected(now, false);
    assert_eq!(
        drain(|| c.poll_event()).last(),
        Some(&cloud::Event::ResyncNeeded)
    );
    // neither object is desired any more
    let plan = c.resync(Vec::new());
    assert!(plan.send.is_empty());
    assert_eq!(
        plan.delete,
        vec![
            ("default/pod/a".to_owned(), Some(3)),
            ("default/pod/b".to_owned(), Some(5))
        ]
    );
    assert_eq!(c.outbox().queued_len(), 0, "queued upserts were cancelled");
}

#[test]
fn a_stale_upsert_after_an_acked_delete_is_dropped() {
    let now = Instant::now();
    let mut c = cloud_session(now);
    c.enqueue(object("default/pod/a", 5, Operation::Insert))
        .unwrap();
    let sent = drain(|| c.poll_transmit(now));
    ack_all(&mut c, now, &sent);
    c.enqueue(object("default/pod/a", 6, Operation::Delete))
        .unwrap();
    let sent = drain(|| c.poll_transmit(now));
    ack_all(&mut c, now, &sent);
    // a lagging source offers the old version again: it must not resurrect the object
    c.enqueue(object("default/pod/a", 5, Operation::Update))
        .unwrap();
    assert!(drain(|| c.poll_transmit(now)).is_empty());
    // a re-creation (newer version) goes through
    c.enqueue(object("default/pod/a", 7, Operation::Insert))
        .unwrap();
    assert_eq!(drain(|| c.poll_transmit(now)).len(), 1);
}

#[test]
fn an_inventory_with_absurd_chunk_counts_is_refused() {
    let now = Instant::now();
    let mut cfg = cloud::Config::default();
    cfg.max_inventory = 10;
    let mut c = cloud::Session::new("e1", cfg, 1, clock(now), now);
    c.connected(now, true);
    let mut chunk = InventoryChunk::split(Vec::new(), 5).remove(0);
    chunk.chunks = u32::MAX;
    let mut m = chunk.to_message();
    m.header.id = "i".into();
    assert_eq!(
        c.handle_frame(now, m),
        Err(ProtocolError::InventoryTooLarge { max: 10 })
    );
}

/// A change still being persisted when the link dropped is acked on the next connection when the
/// cloud resends it, instead of being ignored forever.
#[test]
fn a_resent_change_still_being_persisted_is_acked_on_the_new_connection() {
    let now = Instant::now();
    let mut e = edge::Session::new(edge::Config::default(), Vec::new(), 2, clock(now), now);
    e.connected(now, false);
    drain(|| e.poll_transmit(now));
    let mut first = object("default/pod/a", 5, Operation::Insert);
    first.header.id = "m1".into();
    e.handle_frame(now, first.clone());
    let token = match e.poll_event() {
        Some(edge::Event::Apply { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    e.disconnected();
    e.connected(now, false);
    drain(|| e.poll_transmit(now));
    let mut again = first.clone();
    again.header.id = "m2".into();
    e.handle_frame(now, again);
    assert_eq!(e.poll_event(), None, "not applied twice");
    e.persisted(now, [token]);
    let acks = drain(|| e.poll_transmit(now));
    let parents: Vec<&str> = acks.iter().map(|m| m.header.parent_id.as_str()).collect();
    assert_eq!(
        parents,
        ["m2"],
        "the resend is acked; the old connection's message is not"
    );
}

#[test]
fn the_clouds_answer_reaches_the_edge_with_the_uplink_ack() {
    let now = Instant::now();
    let mut e = edge::Session::new(edge::Config::default(), Vec::new(), 2, clock(now), now);
    e.connected(now, true);
    drain(|| e.poll_transmit(now));
    let query = Message::new(
        "",
        0,
        Route::new(
            "metamanager",
            "meta",
            Operation::Query,
            "default/configmap/cfg",
        ),
    )
    .with_resource_version("1");
    e.enqueue_uplink(query).unwrap();
    let sent = drain(|| e.poll_transmit(now));
    let answer = sent[0].response(
        "r1",
        0,
        serde_json::json!({"kind": "ConfigMap", "data": {"a": "b"}}),
    );
    e.handle_frame(now, answer);
    match e.poll_event() {
        Some(edge::Event::UplinkAcked {
            key,
            reply: Some(reply),
            ..
        }) => {
            assert_eq!(key, "default/configmap/cfg");
            assert_eq!(reply.content["data"]["a"], "b");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stale_answer_is_still_delivered() {
    let now = Instant::now();
    let inventory = vec![("default/configmap/cfg".to_owned(), Some(9))];
    let mut e = edge::Session::new(edge::Config::default(), inventory, 2, clock(now), now);
    e.connected(now, false);
    drain(|| e.poll_transmit(now));
    let answer = Message::new(
        "x1",
        0,
        Route::new(
            "edgecontroller",
            "resource",
            Operation::Response,
            "default/configmap/cfg",
        ),
    )
    .with_parent("q1")
    .with_resource_version("9");
    e.handle_frame(now, answer);
    assert!(matches!(e.poll_event(), Some(edge::Event::Deliver(m)) if m.header.parent_id == "q1"));
    assert_eq!(drain(|| e.poll_transmit(now)).len(), 1, "and acked");
}

#[test]
fn a_retransmitted_uplink_is_handled_once_while_its_first_copy_is_in_flight() {
    let now = Instant::now();
    let mut c = cloud_session(now);
    let registration = Message::new(
        "u1",
        0,
        Route::new(
            "edged",
            names::RESOURCE_GROUP,
            Operation::Insert,
            "null/node/e1",
        ),
    )
    .with_resource_version("1")
    .with_content(serde_json::json!({"kind": "Node"}));
    let uplinks = |c: &mut cloud::Session| {
        drain(|| c.poll_event())
            .into_iter()
            .filter_map(|e| match e {
                cloud::Event::Uplink { token, .. } => token,
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    c.handle_frame(now, registration.clone()).unwrap();
    let mut first = uplinks(&mut c);
    assert_eq!(first.len(), 1);
    // The edge's retransmissions (same id) while the cloud still works on it: nothing new.
    for s in [5, 15] {
        c.handle_frame(now + Duration::from_secs(s), registration.clone())
            .unwrap();
    }
    assert!(
        uplinks(&mut c).is_empty(),
        "a retransmission was handed out again"
    );
    assert!(drain(|| c.poll_transmit(now)).is_empty());
    // The answer goes to the id both copies carry.
    c.complete_uplink(
        now,
        first.remove(0),
        Some(serde_json::json!({"kind": "Node"})),
    );
    let sent = drain(|| c.poll_transmit(now));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.parent_id, "u1");
    // A later copy (the answer was lost) is acked at once, not handled again.
    c.handle_frame(now, registration.clone()).unwrap();
    assert!(uplinks(&mut c).is_empty());
    assert_eq!(drain(|| c.poll_transmit(now)).len(), 1);
    // On a new connection the same message is handled again.
    c.connected(now, false);
    c.handle_frame(now, registration).unwrap();
    assert_eq!(uplinks(&mut c).len(), 1);
}
