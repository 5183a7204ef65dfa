//! Requests to the Kubernetes API facade (the embedded control plane and the edge metaserver
//! serve the same code): any method, path, query, content type and body. Writes are dry runs, so
//! the store stays small; reads see a few objects.
//!
//! Input: byte 0 picks the method, byte 1 the content type, then the path and query up to a
//! newline, then the body.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use kubeedge_core::kubeapi::Api;
use kubeedge_core::store::{self, Store};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const TYPES: [&str; 7] = [
    "application/json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
    "application/vnd.kubernetes.protobuf",
    "application/yaml",
];

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let path = kubeedge_fuzz::scratch().join("api.redb");
        let store = Store::open(&path, store::Config::default()).expect("a store");
        let api = Api::new(store).expect("an API");
        let seed = [
            ("/api/v1/namespaces/default/configmaps", r#"{"metadata":{"name":"c","labels":{"a":"b"}},"data":{"k":"v"}}"#),
            ("/api/v1/namespaces/default/pods", r#"{"metadata":{"name":"p"},"spec":{"nodeName":"e1","containers":[{"name":"c","image":"i","ports":[{"containerPort":80}]}]}}"#),
            ("/api/v1/namespaces/default/services", r#"{"metadata":{"name":"s"},"spec":{"ports":[{"port":80}]}}"#),
        ];
        for (path, body) in seed {
            let request = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("a request");
            kubeedge_fuzz::runtime()
                .block_on(api.router().oneshot(request))
                .expect("seeded");
        }
        api
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let method = METHODS[data[0] as usize % METHODS.len()];
    let content_type = TYPES[data[1] as usize % TYPES.len()];
    let (target, body) = kubeedge_fuzz::split(&data[2..], b'\n');
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    if !target.starts_with('/') || target.contains("watch") || target.contains("follow") {
        // Watches and followed logs stream until the client leaves; they are served by the same
        // request decoding as lists and gets.
        return;
    }
    let target = if method == "GET" {
        target.to_owned()
    } else if target.contains('?') {
        format!("{target}&dryRun=All")
    } else {
        format!("{target}?dryRun=All")
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(target)
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let api = api();
    kubeedge_fuzz::runtime().block_on(async {
        let response = api.router().oneshot(request).await.expect("infallible");
        let _ = axum::body::to_bytes(response.into_body(), 16 << 20).await;
    });
});
