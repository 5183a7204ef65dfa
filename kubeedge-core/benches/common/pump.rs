//! A cloud session and an edge session joined by an in-memory link with a fixed one-way latency, in
//! virtual time. The edge persists with group commit: the first change of a batch opens it, the
//! commit completes `commit` later, and everything that arrived meanwhile is acked together.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kubeedge_core::message::{Message, Operation, Route};
use kubeedge_core::sync::stamp::WallClock;
use kubeedge_core::sync::{cloud, edge, outbox};

/// One run's settings.
pub struct Setup {
    /// Messages in flight at once.
    pub window: usize,
    /// Objects to deliver.
    pub objects: usize,
    /// One-way link latency.
    pub one_way: Duration,
    /// Edge commit time (fsync).
    pub commit: Duration,
    /// Encode and decode every message, as the real link does.
    pub codec: bool,
}

/// Virtual time until every object was acked, and the number of commits the edge made.
pub fn run(s: &Setup) -> (Duration, usize) {
    let start = Instant::now();
    let clock = WallClock::new(start, 1_700_000_000_000);
    let mut ccfg = cloud::Config::default();
    ccfg.outbox = outbox::Config::default();
    ccfg.outbox.window = s.window;
    ccfg.outbox.capacity = s.objects + 1;
    ccfg.outbox.initial_rto = Duration::from_secs(60);
    ccfg.outbox.max_rto = Duration::from_secs(60);
    ccfg.keepalive_timeout = Duration::from_secs(3600);
    let mut cloud = cloud::Session::new("e1", ccfg, 1, clock, start);
    let mut ecfg = edge::Config::default();
    ecfg.keepalive_interval = Duration::from_secs(1800);
    ecfg.dead_after = Duration::from_secs(3600);
    let mut edge = edge::Session::new(ecfg, Vec::new(), 2, clock, start);
    let mut now = start;
    cloud.connected(now, true);
    edge.connected(now, true);
    let mut to_edge: VecDeque<(Instant, Message)> = VecDeque::new();
    let mut to_cloud: VecDeque<(Instant, Message)> = VecDeque::new();
    let mut batch = Vec::new();
    let mut commit_at: Option<Instant> = None;
    let (mut acked, mut commits) = (0, 0);
    let hop = |m: Message| -> Message {
        if s.codec {
            Message::from_json(&m.to_json(), 1 << 20).expect("codec round trip")
        } else {
            m
        }
    };
    while acked < s.objects {
        loop {
            let mut progress = false;
            while let Some(m) = cloud.poll_transmit(now) {
                to_edge.push_back((now + s.one_way, hop(m)));
                progress = true;
            }
            while let Some(m) = edge.poll_transmit(now) {
                to_cloud.push_back((now + s.one_way, hop(m)));
                progress = true;
            }
            while let Some(ev) = cloud.poll_event() {
                progress = true;
                match ev {
                    cloud::Event::ResyncNeeded => {
                        cloud.resync(Vec::new());
                        for i in 0..s.objects {
                            let _ = cloud.enqueue(object(i));
                        }
                    }
                    cloud::Event::Acked { .. } => acked += 1,
                    _ => {}
                }
            }
            while let Some(ev) = edge.poll_event() {
                progress = true;
                if let edge::Event::Apply { token, .. } = ev {
                    batch.push(token);
                    commit_at.get_or_insert(now + s.commit);
                }
            }
            if !progress {
                break;
            }
        }
        if acked >= s.objects {
            break;
        }
        let next = [
            to_edge.front().map(|x| x.0),
            to_cloud.front().map(|x| x.0),
            commit_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something is in flight");
        now = now.max(next);
        if commit_at.is_some_and(|t| t <= now) {
            commit_at = None;
            commits += 1;
            edge.persisted(now, std::mem::take(&mut batch));
        }
        while to_edge.front().is_some_and(|x| x.0 <= now) {
            let (_, m) = to_edge.pop_front().expect("checked");
            edge.handle_frame(now, m);
        }
        while to_cloud.front().is_some_and(|x| x.0 <= now) {
            let (_, m) = to_cloud.pop_front().expect("checked");
            cloud.handle_frame(now, m).expect("valid frames");
        }
    }
    (now - start, commits)
}

fn object(i: usize) -> Message {
    Message::new("", 0, Route::new("edgecontroller", "resource", Operation::Insert, format!("default/pod/p{i}")))
        .with_resource_version((i + 1).to_string())
        .with_content(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "default", "resourceVersion": (i + 1).to_string()},
            "spec": {"nodeName": "e1", "containers": [{"name": "app", "image": "busybox"}]}
        }))
}
