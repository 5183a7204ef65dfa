//! The versioned object store: CRUD, optimistic concurrency, selectors, paging, watch, restarts and
//! bad input.

use std::time::Duration;

use kubeedge_core::store::{Config, Error, EventType, FieldSelector, LabelSelector, Store};
use serde_json::{Value, json};

fn open(dir: &tempdir::Dir, config: Config) -> Store {
    Store::open(&dir.path().join("objects.redb"), config).unwrap()
}

fn pod(name: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn all() -> (LabelSelector, FieldSelector) {
    (LabelSelector::default(), FieldSelector::default())
}

/// A temporary directory removed on drop (no extra crate for this).
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "kubeedge-store-{}-{}",
                std::process::id(),
                kubeedge_core::transport::driver::random_seed()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn create_get_update_delete_with_versions() {
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    let created = store
        .create("pods", Some("default"), pod("web", "e1", "web"))
        .unwrap();
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(
        created["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(matches!(
        store.create("pods", Some("default"), pod("web", "e1", "web")),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(store.get("pods", Some("default"), "web").unwrap(), created);
    // the same name in another namespace is another object
    store
        .create("pods", Some("other"), pod("web", "e2", "web"))
        .unwrap();

    // update with the current version: label change keeps generation, spec change raises it
    let mut next = created.clone();
    next["metadata"]["labels"]["v"] = json!("2");
    let updated = store.update("pods", Some("default"), "web", next).unwrap();
    assert_eq!(updated["metadata"]["resourceVersion"], "3");
    assert_eq!(updated["metadata"]["generation"], 1);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let mut spec = updated.clone();
    spec["spec"]["nodeName"] = json!("e9");
    let updated = store.update("pods", Some("default"), "web", spec).unwrap();
    assert_eq!(updated["metadata"]["generation"], 2);

    // a stale version conflicts and changes nothing
    let mut stale = created.clone();
    stale["spec"]["nodeName"] = json!("zz");
    match store.update("pods", Some("default"), "web", stale) {
        Err(Error::Conflict { given, current, .. }) => {
            assert_eq!(given, "1");
            assert_eq!(current, 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get("pods", Some("default"), "web").unwrap(), updated);

    // delete with a wrong precondition fails; then for real
    assert!(matches!(
        store.delete("pods", Some("default"), "web", Some(1)),
        Err(Error::Conflict { .. })
    ));
    let gone = store
        .delete("pods", Some("default"), "web", Some(4))
        .unwrap();
    assert_eq!(gone["metadata"]["resourceVersion"], "5");
    assert!(matches!(
        store.get("pods", Some("default"), "web"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.update("pods", Some("default"), "web", pod("web", "e1", "web")),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn cluster_scoped_objects_and_generate_name() {
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    let node = store
        .create(
            "nodes",
            None,
            json!({"kind": "Node", "metadata": {"name": "e1", "namespace": "x"}}),
        )
        .unwrap();
    assert!(node["metadata"].get("namespace").is_none());
    assert_eq!(store.get("nodes", None, "e1").unwrap(), node);
    let ev = store
        .create(
            "events",
            Some("default"),
            json!({"metadata": {"generateName": "web."}}),
        )
        .unwrap();
    let name = ev["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web.") && name.len() == 9, "{name}");
}

#[test]
fn bad_objects_are_refused_and_nothing_is_stored() {
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    for bad in [
        json!({"kind": "Pod"}),
        json!({"metadata": "x"}),
        json!({"metadata": {}}),
        json!({"metadata": {"name": "Upper/Case"}}),
    ] {
        assert!(matches!(
            store.create("pods", Some("default"), bad),
            Err(Error::Invalid(_))
        ));
    }
    assert_eq!(store.resource_version().unwrap(), 0);
}

#[test]
fn lists_filter_by_namespace_labels_and_fields_and_page() {
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    for (ns, name, node, app) in [
        ("default", "a", "e1", "web"),
        ("default", "b", "e2", "web"),
        ("default", "c", "e1", "db"),
        ("kube-system", "d", "e1", "web"),
    ] {
        store
            .create("pods", Some(ns), pod(name, node, app))
            .unwrap();
    }
    let (none, any) = all();
    let names = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (items, rv) = store.list("pods", None, &none, &any).unwrap();
    assert_eq!(names(&items), ["a", "b", "c", "d"]);
    assert_eq!(rv, 4);
    let (items, _) = store.list("pods", Some("default"), &none, &any).unwrap();
    assert_eq!(names(&items), ["a", "b", "c"]);
    let on_e1 = FieldSelector::parse("spec.nodeName=e1").unwrap();
    let web = LabelSelector::parse("app=web").unwrap();
    let (items, _) = store.list("pods", None, &web, &on_e1).unwrap();
    assert_eq!(names(&items), ["a", "d"]);
    let named = FieldSelector::parse("metadata.name=c").unwrap();
    assert_eq!(
        names(&store.list("pods", None, &none, &named).unwrap().0),
        ["c"]
    );
    assert!(
        store
            .list("configmaps", None, &none, &any)
            .unwrap()
            .0
            .is_empty()
    );

    // paging: 2 + 2, the token continues where the first page stopped
    let p1 = store
        .list_page("pods", None, &none, &any, Some(2), None)
        .unwrap();
    assert_eq!(names(&p1.items), ["a", "b"]);
    let token = p1.continue_after.unwrap();
    let p2 = store
        .list_page("pods", None, &none, &any, Some(2), Some(&token))
        .unwrap();
    assert_eq!(names(&p2.items), ["c", "d"]);
    assert!(p2.continue_after.is_none());
    assert!(matches!(
        store.list_page("configmaps", None, &none, &any, Some(2), Some(&token)),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn restarts_keep_objects_and_versions_stay_monotonic() {
    let dir = tempdir::Dir::new();
    {
        let store = open(&dir, Config::default());
        for i in 0..5 {
            store
                .create(
                    "configmaps",
                    Some("default"),
                    json!({"metadata": {"name": format!("cm{i}")}}),
                )
                .unwrap();
        }
        store
            .delete("configmaps", Some("default"), "cm0", None)
            .unwrap();
    }
    let store = open(&dir, Config::default());
    assert_eq!(store.resource_version().unwrap(), 6);
    let (none, any) = all();
    assert_eq!(
        store.list("configmaps", None, &none, &any).unwrap().0.len(),
        4
    );
    let next = store
        .create(
            "configmaps",
            Some("default"),
            json!({"metadata": {"name": "cm9"}}),
        )
        .unwrap();
    assert_eq!(next["metadata"]["resourceVersion"], "7");
    // the event log survived too
    let events = store.events_since(4).unwrap();
    assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(events[1].kind, EventType::Deleted);
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("objects.redb");
    std::fs::write(
        &path,
        b"this is not a redb database, just some bytes to trip the header check",
    )
    .unwrap();
    match Store::open(&path, Config::default()) {
        Err(e @ Error::Open { .. }) => assert!(e.to_string().contains("objects.redb")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_damaged_file_gives_errors_never_a_panic() {
    let dir = tempdir::Dir::new();
    let good = dir.path().join("good.redb");
    {
        let store = open_at(&good);
        for i in 0..300 {
            store
                .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
                .unwrap();
        }
    }
    let bytes = std::fs::read(&good).unwrap();
    // Damage in many places (a fixed sequence, so a failure reproduces): the header, the region
    // allocator, B-tree pages, the data; also a truncated copy.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = (0, 0);
    for round in 0..60 {
        let mut damaged = bytes.clone();
        if round == 0 {
            damaged.truncate(bytes.len() / 2);
        } else {
            for _ in 0..(1 + round % 8) {
                let at = (next() as usize) % damaged.len();
                damaged[at] ^= (next() as u8) | 1;
            }
        }
        let path = dir.path().join(format!("damaged-{round}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let result = std::panic::catch_unwind(|| match Store::open(&path, Config::default()) {
            Err(_) => false,
            Ok(store) => {
                // Whatever opens is read through: every answer is a value or an error.
                let _ = store.list_all("pods", None);
                let _ = store.get("pods", Some("default"), "p7");
                let _ = store.create("pods", Some("default"), pod("new", "e1", "web"));
                true
            }
        });
        match result {
            Ok(true) => outcomes.0 += 1,
            Ok(false) => outcomes.1 += 1,
            Err(_) => panic!("round {round}: a damaged store file made the store panic"),
        }
    }
    assert!(outcomes.1 > 0, "some damage is detected: {outcomes:?}");
}

fn open_at(path: &std::path::Path) -> Store {
    Store::open(path, Config::default()).unwrap()
}

#[tokio::test]
async fn watch_resumes_from_a_version_and_old_versions_are_gone() {
    let dir = tempdir::Dir::new();
    let mut cfg = Config::default();
    cfg.event_window = 5;
    let store = open(&dir, cfg);
    for i in 0..3 {
        store
            .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
            .unwrap();
    }
    let mut w = store.watch(1).unwrap();
    assert_eq!(w.next().await.unwrap().rv, 2);
    assert_eq!(w.next().await.unwrap().rv, 3);
    store.delete("pods", Some("default"), "p0", None).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.rv, ev.kind, ev.name.as_str()),
        (4, EventType::Deleted, "p0")
    );
    for i in 3..10 {
        store
            .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
            .unwrap();
    }
    // 11 events, the last 5 kept: resuming from 6 works, from 5 is gone
    assert_eq!(store.oldest_watchable().unwrap(), 6);
    assert!(store.watch(6).is_ok());
    match store.watch(5) {
        Err(Error::Gone {
            requested: 5,
            oldest: 6,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_quiet_resource_resumes_after_a_busy_one_filled_the_window() {
    let dir = tempdir::Dir::new();
    let mut cfg = Config::default();
    cfg.event_window = 5;
    let store = open(&dir, cfg);
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    store
        .create("configmaps", Some("default"), cm("quiet"))
        .unwrap(); // rv 1
    store
        .create("configmaps", Some("default"), cm("second"))
        .unwrap(); // rv 2
    for i in 0..10 {
        store
            .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
            .unwrap(); // rv 3..=12
    }
    assert_eq!(store.oldest_watchable().unwrap(), 7);
    // A ConfigMap watcher at 2 missed no ConfigMap: it resumes, and sees the next one.
    let mut w = store.watch_resource(2, "configmaps").unwrap();
    store
        .create("configmaps", Some("default"), cm("third"))
        .unwrap(); // rv 13
    let seen = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap();
        if ev.resource == "configmaps" {
            break ev;
        }
    };
    assert_eq!((seen.rv, seen.name.as_str()), (13, "third"));
    // At 1 it missed ConfigMap "second" (rv 2, dropped): gone, as from any watcher of all.
    assert!(matches!(
        store.watch_resource(1, "configmaps"),
        Err(Error::Gone { .. })
    ));
    assert!(matches!(store.watch(2), Err(Error::Gone { .. })));
    // Pods at 2 were dropped after it: gone.
    assert!(matches!(
        store.watch_resource(2, "pods"),
        Err(Error::Gone { .. })
    ));
    // The marks survive a reopen.
    drop(w);
    drop(store);
    let mut cfg = Config::default();
    cfg.event_window = 5;
    let store = open(&dir, cfg);
    assert!(store.watch_resource(2, "configmaps").is_ok());
    assert!(store.watch_resource(2, "secrets").is_ok());
}

#[tokio::test]
async fn a_watcher_that_falls_behind_loses_nothing() {
    let dir = tempdir::Dir::new();
    let mut cfg = Config::default();
    cfg.watch_buffer = 2;
    let store = open(&dir, cfg);
    let mut w = store.watch(0).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                store
                    .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
                    .unwrap();
            }
        })
    };
    writer.join().unwrap();
    for want in 1..=50u64 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.rv, want);
    }
}

#[tokio::test]
async fn a_watcher_of_one_resource_behind_a_busy_one_gets_its_own_events_only() {
    let dir = tempdir::Dir::new();
    let mut cfg = Config::default();
    cfg.watch_buffer = 2;
    let store = open(&dir, cfg);
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let mut w = store.watch_resource(0, "configmaps").unwrap();
    // Far more than the live buffer: the watcher reads the rest from the log.
    for i in 0..50 {
        store
            .create("pods", Some("default"), pod(&format!("p{i}"), "e1", "web"))
            .unwrap();
        if i % 10 == 9 {
            store
                .create("configmaps", Some("default"), cm(&format!("cm{i}")))
                .unwrap();
        }
    }
    let mut names = Vec::new();
    let mut last = 0;
    for _ in 0..5 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.resource, "configmaps");
        assert!(ev.rv > last);
        last = ev.rv;
        names.push(ev.name.clone());
    }
    assert_eq!(names, ["cm9", "cm19", "cm29", "cm39", "cm49"]);
    // Live again: the next ConfigMap, after pods it reads past, and the watch stands at it.
    store
        .create("pods", Some("default"), pod("late-pod", "e1", "web"))
        .unwrap();
    let late = store
        .create("configmaps", Some("default"), cm("late"))
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.resource.as_str(), ev.name.as_str()),
        ("configmaps", "late")
    );
    assert_eq!(late["metadata"]["resourceVersion"], ev.rv.to_string());
    assert_eq!(w.last_rv(), store.resource_version().unwrap());
}

#[tokio::test]
async fn writers_committed_together_fail_alone() {
    // Eight threads race on the same names (creates, then updates at the version each read): in
    // whatever groups they are committed, each name is created once and updated once per version,
    // the losers are told why, and the log holds exactly what the winners were answered.
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    let mut w = store.watch(0).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for i in 0..20 {
                    let name = format!("p{i}");
                    match store.create("pods", Some("default"), pod(&name, "e1", "web")) {
                        Ok(p) => won.push(p["metadata"]["resourceVersion"].clone()),
                        Err(Error::AlreadyExists { .. }) => {}
                        Err(e) => panic!("create {name}: {e}"),
                    }
                    let Ok(mut p) = store.get("pods", Some("default"), &name) else {
                        panic!("{name} is not there");
                    };
                    p["metadata"]["labels"]["seen"] = json!("yes");
                    match store.update("pods", Some("default"), &name, p) {
                        Ok(p) => won.push(p["metadata"]["resourceVersion"].clone()),
                        Err(Error::Conflict { .. }) => {}
                        Err(e) => panic!("update {name}: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut answered: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    answered.sort_unstable();
    let last = store.resource_version().unwrap();
    assert_eq!(answered, (1..=last).collect::<Vec<_>>());
    let (mut created, mut updated) = (0, 0);
    for want in 1..=last {
        let ev = w.next().await.unwrap();
        assert_eq!(ev.rv, want);
        match ev.kind {
            EventType::Added => created += 1,
            EventType::Modified => updated += 1,
            EventType::Deleted => panic!("nothing was deleted"),
        }
    }
    assert_eq!(created, 20);
    assert!(
        updated >= 20,
        "every pod was updated at least once: {updated}"
    );
}

#[tokio::test]
async fn concurrent_writers_get_distinct_increasing_versions() {
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    let mut w = store.watch(0).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    store
                        .create(
                            "pods",
                            Some("default"),
                            pod(&format!("t{t}-{i}"), "e1", "web"),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for want in 1..=100u64 {
        assert_eq!(w.next().await.unwrap().rv, want);
    }
    assert_eq!(store.resource_version().unwrap(), 100);
}

#[tokio::test]
async fn a_batch_commits_objects_and_bookkeeping_together() {
    use kubeedge_core::store::BatchOp;
    let dir = tempdir::Dir::new();
    let store = open(&dir, Config::default());
    let start = store.resource_version().unwrap();
    let mut watch = store.watch(start).unwrap();
    let mut cloud_pod = pod("web", "e1", "web");
    cloud_pod["metadata"]["uid"] = json!("cloud-uid-1");
    cloud_pod["metadata"]["resourceVersion"] = json!("48211");
    let events = store
        .batch(vec![
            BatchOp::Put {
                resource: "pods".into(),
                namespace: Some("default".into()),
                object: cloud_pod,
            },
            BatchOp::Put {
                resource: "pods".into(),
                namespace: Some("default".into()),
                object: pod("db", "e1", "db"),
            },
            BatchOp::SetAux {
                key: "sync/default/pod/web".into(),
                value: b"48211".to_vec(),
            },
            BatchOp::Remove {
                resource: "pods".into(),
                namespace: Some("default".into()),
                name: "absent".into(),
            },
        ])
        .unwrap();
    assert_eq!(events.len(), 2, "removing an absent object is no event");
    assert_eq!(events[0].rv, start + 1);
    assert_eq!(events[1].rv, start + 2);
    let web = store.get("pods", Some("default"), "web").unwrap();
    assert_eq!(
        web["metadata"]["uid"], "cloud-uid-1",
        "the source's identity is kept"
    );
    assert_eq!(web["metadata"]["resourceVersion"], (start + 1).to_string());
    assert_eq!(watch.next().await.unwrap().kind, EventType::Added);
    // replace + remove in a second batch
    let events = store
        .batch(vec![
            BatchOp::Put {
                resource: "pods".into(),
                namespace: Some("default".into()),
                object: pod("web", "e1", "web2"),
            },
            BatchOp::Remove {
                resource: "pods".into(),
                namespace: Some("default".into()),
                name: "db".into(),
            },
            BatchOp::RemoveAux {
                key: "sync/default/pod/web".into(),
            },
            BatchOp::SetAux {
                key: "sync/default/pod/web2".into(),
                value: b"1".to_vec(),
            },
        ])
        .unwrap();
    assert_eq!(events[0].kind, EventType::Modified);
    assert_eq!(events[1].kind, EventType::Deleted);
    // an invalid op: nothing of the batch is written
    let rv = store.resource_version().unwrap();
    let bad = store.batch(vec![
        BatchOp::SetAux {
            key: "sync/x".into(),
            value: vec![],
        },
        BatchOp::Put {
            resource: "pods".into(),
            namespace: None,
            object: json!({"metadata": {"name": "Not Valid"}}),
        },
    ]);
    assert!(matches!(bad, Err(Error::Invalid(_))));
    assert_eq!(store.resource_version().unwrap(), rv);
    drop(watch);
    drop(store);
    let store = open(&dir, Config::default());
    let aux = store.aux_scan("sync/").unwrap();
    assert_eq!(
        aux,
        vec![("sync/default/pod/web2".to_owned(), b"1".to_vec())]
    );
    assert_eq!(store.aux_get("sync/x").unwrap(), None);
    assert!(store.get("pods", Some("default"), "db").is_err());
}
