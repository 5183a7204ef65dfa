//! Golden tests built from the upstream wire facts (shared/spec/kubeedge-wire.md §1, §6, §7): each
//! upstream JSON decodes to the expected typed message and encodes back to the same bytes.

use kubeedge_core::message::{DecodeError, Message, Operation, ResourceType, Route};
use kubeedge_core::resource::ObjectRef;

const MAX: usize = 1 << 20;

/// Decodes `json`, checks it re-encodes to exactly the same bytes, and returns it.
///
/// The envelope keeps upstream's key order (`header`, `route`, `content`; Go struct order inside);
/// objects inside `content` are re-encoded with sorted keys, so the golden texts list them sorted.
fn golden(json: &str) -> Message {
    let msg = Message::from_json(json.as_bytes(), MAX).unwrap();
    assert_eq!(String::from_utf8(msg.to_json()).unwrap(), json);
    msg
}

#[test]
fn pod_insert_from_the_cloud() {
    let json = r#"{"header":{"msg_id":"6f1c2b2e-6a43-4e43-9d4c-0a6d1f6f3b10","timestamp":1718000000123,"resourceversion":"48211"},"route":{"source":"edgecontroller","group":"resource","operation":"insert","resource":"default/pod/nginx"},"content":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx","namespace":"default","resourceVersion":"48211","uid":"1f0e3dad-9990-4ad4-8a1b-7c3e5b1d2c4f"},"spec":{"containers":[{"image":"nginx","name":"nginx"}],"nodeName":"e1"}}}"#;
    let msg = golden(json);
    assert_eq!(msg.header.id, "6f1c2b2e-6a43-4e43-9d4c-0a6d1f6f3b10");
    assert_eq!(msg.header.timestamp, 1_718_000_000_123);
    assert_eq!(msg.header.resource_version, "48211");
    assert!(msg.header.parent_id.is_empty() && !msg.header.sync);
    assert_eq!(msg.route.operation, Operation::Insert);
    let r: ObjectRef = msg.route.resource.parse().unwrap();
    assert_eq!(r.kind, ResourceType::Pod);
    assert_eq!(msg.content["spec"]["nodeName"], "e1");
    assert!(!msg.is_delete());
}

#[test]
fn ack_response_copies_source_group_and_resource() {
    let json = r#"{"header":{"msg_id":"a0b2c3d4-0000-4000-8000-000000000001","parent_msg_id":"6f1c2b2e-6a43-4e43-9d4c-0a6d1f6f3b10","timestamp":1718000000190},"route":{"source":"edgecontroller","group":"resource","operation":"response","resource":"default/pod/nginx"},"content":"OK"}"#;
    let ack = golden(json);
    let insert = Message::new(
        "6f1c2b2e-6a43-4e43-9d4c-0a6d1f6f3b10",
        1_718_000_000_123,
        Route::new(
            "edgecontroller",
            "resource",
            Operation::Insert,
            "default/pod/nginx",
        ),
    )
    .with_resource_version("48211");
    let built = insert.response(
        "a0b2c3d4-0000-4000-8000-000000000001",
        1_718_000_000_190,
        serde_json::json!("OK"),
    );
    assert_eq!(built, ack);
    assert_eq!(ack.content_bytes().as_ref(), b"OK");
}

#[test]
fn keepalive_from_the_edge() {
    let json = r#"{"header":{"msg_id":"0d2a6d86-3f0c-4f55-8f39-51a1b5fd2f5e","timestamp":1718000000000},"route":{"source":"websocket","group":"resource","operation":"keepalive","resource":"node"},"content":"ping"}"#;
    let msg = golden(json);
    assert_eq!(msg.route.operation, Operation::Keepalive);
    let mut built = kubeedge_core::sync::keepalive_message();
    built.header.id = msg.header.id.clone();
    built.header.timestamp = msg.header.timestamp;
    assert_eq!(built, msg);
}

#[test]
fn nodepatch_carries_the_patch_as_a_json_string() {
    let json = r#"{"header":{"msg_id":"b1b2b3b4-0000-4000-8000-000000000002","timestamp":1718000000500},"route":{"source":"edged","group":"meta","operation":"patch","resource":"null/nodepatch/e1"},"content":"{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}"}"#;
    let msg = golden(json);
    assert_eq!(msg.route.operation, Operation::Patch);
    let r: ObjectRef = msg.route.resource.parse().unwrap();
    assert_eq!(r, ObjectRef::cluster(ResourceType::NodePatch, "e1"));
    let patch: serde_json::Value = serde_json::from_slice(&msg.content_bytes()).unwrap();
    assert_eq!(patch["status"]["conditions"][0]["type"], "Ready");
}

#[test]
fn twin_update_to_the_cloud() {
    let json = r#"{"header":{"msg_id":"c1c2c3c4-0000-4000-8000-000000000003","timestamp":1718000000700},"route":{"source":"twin","group":"resource","operation":"update","resource":"device/default/thermo/twin/edge_updated"},"content":{"event_id":"","timestamp":1718000000000,"twin":{"temperature":{"actual":{"metadata":{"timestamp":1718000000000},"value":"25.3"},"metadata":{"type":"float"}}}}}"#;
    let msg = golden(json);
    assert_eq!(msg.route.operation, Operation::Update);
    assert_eq!(msg.route.source, "twin");
    assert_eq!(
        msg.content["twin"]["temperature"]["actual"]["value"],
        "25.3"
    );
}

#[test]
fn empty_fields_are_omitted_and_sync_only_when_true() {
    let msg = Message::new("id", 1, Route::default());
    assert_eq!(
        String::from_utf8(msg.to_json()).unwrap(),
        r#"{"header":{"msg_id":"id","timestamp":1},"route":{},"content":null}"#
    );
    let mut msg = msg;
    msg.header.sync = true;
    msg.header.message_type = "channel".into();
    assert_eq!(
        String::from_utf8(msg.to_json()).unwrap(),
        r#"{"header":{"msg_id":"id","timestamp":1,"sync":true,"type":"channel"},"route":{},"content":null}"#
    );
}

#[test]
fn byte_content_is_base64_like_go() {
    let mut msg = Message::new("id", 1, Route::default());
    msg.set_content_bytes(b"{\"a\":1}");
    assert_eq!(msg.content, serde_json::json!("eyJhIjoxfQ=="));
    assert_eq!(msg.content_base64().unwrap(), b"{\"a\":1}");
    let obj = Message::new("id", 1, Route::default()).with_content(serde_json::json!({"a": 1}));
    assert_eq!(obj.content_bytes().as_ref(), b"{\"a\":1}");
}

#[test]
fn unknown_operations_and_types_round_trip() {
    let json = r#"{"header":{"msg_id":"x","timestamp":5},"route":{"source":"s","group":"g","operation":"frobnicate","resource":"ns/widget/w1"},"content":null}"#;
    let msg = golden(json);
    assert_eq!(msg.route.operation, Operation::Other("frobnicate".into()));
    let r: ObjectRef = msg.route.resource.parse().unwrap();
    assert_eq!(r.kind, ResourceType::Other("widget".into()));
    assert_eq!(r.to_string(), "ns/widget/w1");
}

#[test]
fn delete_by_operation_or_deletion_timestamp() {
    let del = Message::new(
        "x",
        1,
        Route::new("s", "resource", Operation::Delete, "default/pod/a"),
    );
    assert!(del.is_delete());
    let upd = Message::new(
        "x",
        1,
        Route::new("s", "resource", Operation::Update, "default/pod/a"),
    )
    .with_content(serde_json::json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}));
    assert!(upd.is_delete());
}

#[test]
fn trailing_newline_from_gorilla_is_accepted() {
    let json = "{\"header\":{\"msg_id\":\"x\",\"timestamp\":5},\"route\":{},\"content\":\"OK\"}\n";
    assert!(Message::from_json(json.as_bytes(), MAX).is_ok());
}

#[test]
fn malformed_and_oversized_input_gives_typed_errors() {
    for bad in [
        &b"{"[..],
        b"[]",
        b"null",
        b"{\"header\":5}",
        b"\xff\xfe",
        b"{\"header\":{}} x",
    ] {
        match Message::from_json(bad, MAX) {
            Err(DecodeError::Malformed(_)) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
        }
    }
    let big = vec![b' '; 100];
    assert_eq!(
        Message::from_json(&big, 99),
        Err(DecodeError::TooLarge { size: 100, max: 99 })
    );
}
