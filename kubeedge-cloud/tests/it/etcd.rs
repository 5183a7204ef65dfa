//! The embedded control plane's store on a real etcd (Debian's etcd-server, started here): two
//! mirrors over one etcd, as two cloudcore replicas hold them, and etcd going away and back.

use std::time::Duration;

use kubeedge_cloud::etcd::{Etcd, EtcdConfig, EtcdFeed};
use kubeedge_core::store::{self, EventType, Store};
use kubeedge_core::test_util::EtcdServer;
use serde_json::json;

use crate::common::TempDir;

async fn start_etcd(dir: &TempDir) -> EtcdServer {
    let path = dir.0.join("etcd");
    tokio::task::spawn_blocking(move || EtcdServer::start(&path))
        .await
        .unwrap()
        .expect("etcd starts (Debian's etcd-server)")
}

async fn mirror(etcd: &str, dir: &TempDir, name: &str) -> (Store, EtcdFeed) {
    let config = EtcdConfig::parse(&format!("etcd://{etcd}/test")).unwrap();
    Etcd::open(&config, &dir.0.join(name), store::Config::default())
        .await
        .unwrap()
}

fn rv(object: &serde_json::Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}})
}

async fn next(watch: &mut store::Watch) -> std::sync::Arc<store::Event> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_share_objects_versions_and_watches() {
    let dir = TempDir::new("etcd-two");
    let etcd = start_etcd(&dir).await;
    let (a, feed_a) = mirror(&etcd.endpoint(), &dir, "a.redb").await;
    let (b, feed_b) = mirror(&etcd.endpoint(), &dir, "b.redb").await;
    assert!(a.is_mirror() && a.health().is_ok());

    let mut watch = b.watch(b.resource_version().unwrap()).unwrap();
    let created = a
        .create("configmaps", Some("default"), config_map("c1", "one"))
        .unwrap();
    // Read-your-writes on the replica that wrote; the other sees the same object and version.
    assert_eq!(a.get("configmaps", Some("default"), "c1").unwrap(), created);
    let ev = next(&mut watch).await;
    assert_eq!((ev.kind, ev.name.as_str()), (EventType::Added, "c1"));
    assert_eq!(ev.rv, rv(&created));
    assert_eq!(ev.object, created);
    assert_eq!(b.get("configmaps", Some("default"), "c1").unwrap(), created);

    // B updates at A's version; A's stale version is then a conflict, as on one store.
    let mut change = created.clone();
    change["data"]["k"] = json!("two");
    let updated = b
        .update("configmaps", Some("default"), "c1", change.clone())
        .unwrap();
    assert!(rv(&updated) > rv(&created));
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let ev = next(&mut watch).await;
    assert_eq!((ev.kind, ev.rv), (EventType::Modified, rv(&updated)));
    match a.update("configmaps", Some("default"), "c1", change) {
        Err(store::Error::Conflict { current, .. }) => assert_eq!(current, rv(&updated)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        a.create("configmaps", Some("default"), config_map("c1", "again")),
        Err(store::Error::AlreadyExists { .. })
    ));

    // Both replicas start at once and initialise the same record: one value wins for both.
    let (a2, b2) = (a.clone(), b.clone());
    let one = std::thread::spawn(move || a2.aux_init("shared/key", b"from-a".to_vec()));
    let two = std::thread::spawn(move || b2.aux_init("shared/key", b"from-b".to_vec()));
    let (one, two) = (one.join().unwrap().unwrap(), two.join().unwrap().unwrap());
    assert_eq!(one, two);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.aux_get("shared/key").unwrap(), Some(one.clone()));
    assert_eq!(b.aux_get("shared/key").unwrap(), Some(one));

    // Many writers on both replicas at once: every write lands once, each with its own version,
    // and a watch on either sees them all in version order.
    let mut watch_a = a.watch(a.resource_version().unwrap()).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = if w % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let o = s
                            .create(
                                "configmaps",
                                Some("default"),
                                config_map(&format!("w{w}-{i}"), "x"),
                            )
                            .unwrap();
                        rv(&o)
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 40);
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let ev = next(&mut watch_a).await;
        if ev.name.starts_with('w') {
            seen.push(ev.rv);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen, versions);

    // A list on either replica, once caught up, is the same.
    let deleted = a
        .delete("configmaps", Some("default"), "c1", Some(rv(&updated)))
        .unwrap();
    let ev = loop {
        let ev = next(&mut watch).await;
        if ev.name == "c1" {
            break ev;
        }
    };
    assert_eq!((ev.kind, ev.rv), (EventType::Deleted, rv(&deleted)));
    let list = |s: &Store| s.list_all("configmaps", Some("default")).unwrap();
    assert_eq!(list(&a), list(&b));
    assert_eq!(list(&a).len(), 40);

    feed_a.stop().await;
    feed_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_start_or_later_is_a_clear_error_and_nothing_is_lost() {
    let dir = TempDir::new("etcd-down");
    let mut etcd = start_etcd(&dir).await;
    let endpoint = etcd.endpoint();
    etcd.kill();

    // Down at start: opening waits for it.
    let opening = {
        let dir = dir.0.clone();
        tokio::spawn(async move {
            let config = EtcdConfig::parse(&format!("etcd://{endpoint}/test")).unwrap();
            Etcd::open(&config, &dir.join("a.redb"), store::Config::default()).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!opening.is_finished(), "opened without etcd");
    let mut etcd = tokio::task::spawn_blocking(move || {
        etcd.restart().unwrap();
        etcd
    })
    .await
    .unwrap();
    let (a, feed) = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .expect("opened once etcd is there")
        .unwrap()
        .unwrap();
    let kept = a
        .create("configmaps", Some("default"), config_map("kept", "1"))
        .unwrap();
    let mut watch = a.watch(a.resource_version().unwrap()).unwrap();

    // Gone: writes fail saying so, health says so, reads still come from the mirror.
    etcd.kill();
    let started = std::time::Instant::now();
    let err = a
        .create("configmaps", Some("default"), config_map("lost", "1"))
        .expect_err("no etcd, no write");
    assert!(matches!(err, store::Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("etcd at"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.health().is_ok() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = a.health().expect_err("unhealthy without etcd");
    assert!(why.contains("etcd at"), "{why}");
    assert_eq!(a.get("configmaps", Some("default"), "kept").unwrap(), kept);

    // Back: healthy again, what was acknowledged is there, writes and the watch go on.
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart().unwrap();
        etcd
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while a.health().is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.health().expect("healthy once etcd is back");
    let after = a
        .create("configmaps", Some("default"), config_map("after", "1"))
        .unwrap();
    let ev = next(&mut watch).await;
    assert_eq!((ev.name.as_str(), ev.rv), ("after", rv(&after)));
    // A second mirror loads everything acknowledged from etcd.
    let (b, feed_b) = mirror(&etcd.endpoint(), &dir, "b.redb").await;
    let names: Vec<String> = b
        .list_all("configmaps", Some("default"))
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["after", "kept"]);
    feed.stop().await;
    feed_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_three_members_changes_nothing() {
    let dir = TempDir::new("etcd-three");
    let path = dir.0.join("etcd");
    let mut members = tokio::task::spawn_blocking(move || EtcdServer::cluster(&path, 3))
        .await
        .unwrap()
        .expect("a three-member etcd starts");
    let endpoints: Vec<String> = members.iter().map(EtcdServer::endpoint).collect();
    let (a, feed) = mirror(&endpoints.join(","), &dir, "a.redb").await;
    a.create("configmaps", Some("default"), config_map("before", "1"))
        .unwrap();
    let mut watch = a.watch(a.resource_version().unwrap()).unwrap();

    // One member goes (the first, which the client may well be talking to): every write still
    // succeeds, the watch goes on, the store stays healthy.
    members[0].kill();
    let mut written = Vec::new();
    for i in 0..20 {
        let o = a
            .create(
                "configmaps",
                Some("default"),
                config_map(&format!("during-{i}"), "1"),
            )
            .unwrap_or_else(|e| panic!("write {i} with one member down: {e}"));
        written.push(rv(&o));
        assert!(a.health().is_ok(), "{:?}", a.health());
    }
    for expected in written {
        let ev = next(&mut watch).await;
        assert_eq!(ev.rv, expected);
    }
    // What the two survivors hold is everything.
    let (b, feed_b) = mirror(&endpoints[1..].join(","), &dir, "b.redb").await;
    assert_eq!(b.list_all("configmaps", Some("default")).unwrap().len(), 21);
    feed.stop().await;
    feed_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_creating_services_at_once_never_share_an_address() {
    let dir = TempDir::new("etcd-services");
    let etcd = start_etcd(&dir).await;
    let (a, feed_a) = mirror(&etcd.endpoint(), &dir, "a.redb").await;
    let (b, feed_b) = mirror(&etcd.endpoint(), &dir, "b.redb").await;
    let apis = [
        kubeedge_core::kubeapi::Api::new(a.clone()).unwrap(),
        kubeedge_core::kubeapi::Api::new(b.clone()).unwrap(),
    ];
    // Both replicas create Services at the same moment; each would pick the lowest free address
    // and node port it sees.
    let writers: Vec<_> = apis
        .iter()
        .enumerate()
        .map(|(r, api)| {
            let local = api.local("test");
            std::thread::spawn(move || {
                (0..8)
                    .map(|i| {
                        let svc = json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": format!("s{r}-{i}")},
                            "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
                        let stored = local
                            .create(("", "services"), Some("default"), svc)
                            .unwrap();
                        (
                            stored["spec"]["clusterIP"].as_str().unwrap().to_owned(),
                            stored["spec"]["ports"][0]["nodePort"].as_i64().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let held: Vec<(String, i64)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let ips: std::collections::HashSet<_> = held.iter().map(|h| &h.0).collect();
    let ports: std::collections::HashSet<_> = held.iter().map(|h| h.1).collect();
    assert_eq!((ips.len(), ports.len()), (16, 16), "{held:?}");
    // A Service deleted gives its reservation back (after the grace period, to the leader's
    // sweep): nothing is given back while every Service holds its own.
    assert_eq!(
        kubeedge_core::kubeapi::services::release_unheld(&a).unwrap(),
        0
    );
    drop(apis);
    feed_a.stop().await;
    feed_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_etcd() {
    use kubeedge_cloud::etcd::EtcdTls;
    let dir = TempDir::new("etcd-tls");
    let now = std::time::SystemTime::now();
    let ca = kubeedge_core::pki::Ca::generate(now).unwrap();
    let etcd = {
        let (path, ca) = (
            dir.0.join("etcd"),
            kubeedge_core::pki::Ca::from_der(ca.cert_der(), ca.key_sec1()).unwrap(),
        );
        tokio::task::spawn_blocking(move || EtcdServer::start_tls(&path, &ca))
            .await
            .unwrap()
            .expect("etcd starts with TLS")
    };
    let client = ca
        .issue_client("cloudcore", "kubeedge", Duration::from_secs(3600), now)
        .unwrap();
    let files = [
        dir.0.join("ca.pem"),
        dir.0.join("c.pem"),
        dir.0.join("k.pem"),
    ];
    std::fs::write(&files[0], ca.cert_pem()).unwrap();
    std::fs::write(&files[1], client.cert_pem()).unwrap();
    std::fs::write(&files[2], client.key_pem().unwrap()).unwrap();
    let url = format!("etcd://{}/tls", etcd.endpoint());

    let tls = EtcdTls::from_files(&files[0], Some(&files[1]), Some(&files[2])).unwrap();
    let config = EtcdConfig::parse(&url).unwrap().with_tls(tls);
    assert!(config.endpoints[0].starts_with("https://"));
    let (a, feed) = tokio::time::timeout(
        Duration::from_secs(30),
        Etcd::open(&config, &dir.0.join("a.redb"), store::Config::default()),
    )
    .await
    .expect("connected over TLS")
    .unwrap();
    let created = a
        .create("configmaps", Some("default"), config_map("over-tls", "1"))
        .unwrap();
    assert_eq!(
        a.get("configmaps", Some("default"), "over-tls").unwrap(),
        created
    );
    feed.stop().await;

    // Without a client certificate, or over plain HTTP, etcd is not reached: opening waits.
    let no_cert = EtcdConfig::parse(&url)
        .unwrap()
        .with_tls(EtcdTls::from_files(&files[0], None, None).unwrap());
    let plain = EtcdConfig::parse(&url).unwrap();
    for (what, config) in [("no client certificate", no_cert), ("plain HTTP", plain)] {
        let opened = tokio::time::timeout(
            Duration::from_secs(4),
            Etcd::open(&config, &dir.0.join("b.redb"), store::Config::default()),
        )
        .await;
        assert!(opened.is_err(), "{what}: connected");
    }
    // A key without its certificate is refused outright.
    assert!(EtcdTls::from_files(&files[0], None, Some(&files[2])).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_history_is_compacted_and_the_mirror_goes_on() {
    let dir = TempDir::new("etcd-compact");
    let etcd = start_etcd(&dir).await;
    let mut config = EtcdConfig::parse(&format!("etcd://{}/test", etcd.endpoint())).unwrap();
    config.compact_every = Duration::from_millis(500);
    let (a, feed) = Etcd::open(&config, &dir.0.join("a.redb"), store::Config::default())
        .await
        .unwrap();
    let first = a
        .create("configmaps", Some("default"), config_map("c", "0"))
        .unwrap();
    let mut object = first.clone();
    for i in 1..20 {
        object["data"]["k"] = json!(i.to_string());
        object = a
            .update("configmaps", Some("default"), "c", object.clone())
            .unwrap();
    }
    // The first version's history goes within a few intervals.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let old = rv(&first) as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = client
            .get(
                "/test/o/configmaps/default/c",
                Some(etcd_client::GetOptions::new().with_revision(old)),
            )
            .await;
        match read {
            Err(e) if e.to_string().contains("compacted") => break,
            _ if std::time::Instant::now() > deadline => panic!("not compacted: {read:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // The mirror and its writes go on.
    object["data"]["k"] = json!("after");
    let after = a
        .update("configmaps", Some("default"), "c", object)
        .unwrap();
    assert_eq!(a.get("configmaps", Some("default"), "c").unwrap(), after);
    feed.stop().await;
}
