//! Watch bookmarks: a watch that asks for them learns how far it has come while idle, events it
//! filters out included; one that does not ask gets none.

use std::time::Duration;

use kubeedge_core::kubeapi::Api;
use kubeedge_core::store::{Config, FieldSelector, LabelSelector, Store};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn watch_text(port: u16, query: String) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET /api/v1/namespaces/default/configmaps?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the watch ends at its timeout")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_get_bookmarks_only_when_they_ask() {
    let dir = std::env::temp_dir().join(format!(
        "kubeedge-bookmarks-{}-{}",
        std::process::id(),
        kubeedge_core::transport::driver::random_seed()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("s.redb"), Config::default()).unwrap();
    let api = Api::new(store)
        .unwrap()
        .with_bookmark_interval(Duration::from_millis(300));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = api.clone();
    let server = tokio::spawn(async move { served.serve(listener, std::future::pending()).await });
    let (_, rv) = api
        .store()
        .list(
            "configmaps",
            Some("default"),
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .unwrap();
    let with = tokio::spawn(watch_text(
        port,
        format!("watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"),
    ));
    let without = tokio::spawn(watch_text(
        port,
        format!("watch=true&resourceVersion={rv}&timeoutSeconds=2"),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a change the watches filter out (another namespace)
    let other = api
        .store()
        .create(
            "configmaps",
            Some("kube-system"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "elsewhere", "namespace": "kube-system"}}),
        )
        .unwrap();
    let other_rv: u64 = other["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let with = with.await.unwrap();
    let without = without.await.unwrap();
    assert!(!without.contains("BOOKMARK"), "{without}");
    assert!(!with.contains("elsewhere"), "{with}");
    let marks: Vec<u64> = with
        .lines()
        .filter(|l| l.contains("\"BOOKMARK\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["object"]["kind"], "ConfigMap");
            v["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(marks.len() >= 2, "{with}");
    assert_eq!(*marks.last().unwrap(), other_rv, "{with}");
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
