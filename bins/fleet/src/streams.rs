//! Pod streams through the tunnel: a real cloudcore and edgecore (process runtime), a pod that
//! wrote `size` bytes of log. Log throughput through the cloud (kubectl → API → tunnel → edge)
//! against kubectl on the edge's metaserver and against reading the file; five streams at once
//! while ConfigMaps go down the sync channel (their latency beside the idle one); then cloudcore's
//! and edgecore's memory with 100 idle exec sessions (WebSocket v5, `cat` waiting on stdin).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

use super::cloud::CloudCore;
use super::edgecore::{
    kill_recorded, metaserver_addr, metaserver_client, node_ready, start_joined, wait_for,
};
use super::proc::{self, Daemon};
use super::{Error, mib, table};

const NODE: &str = "streams-edge";
const SCENARIO: &str = "streams";

/// What the scenario measured.
pub struct Report {
    /// Log size, bytes.
    pub size: u64,
    /// (how, seconds) for one full read of the log.
    pub reads: Vec<(String, f64)>,
    /// Five streams at once through the cloud: seconds until all ended.
    pub five: f64,
    /// ConfigMap latency cloud → edge metastore, ms: (idle median, idle max, during median, during max).
    pub sync_ms: (f64, f64, f64, f64),
    /// RSS KiB before and with the idle exec sessions: (cloudcore, edgecore) each.
    pub rss: ((u64, u64), (u64, u64)),
    /// Exec sessions opened.
    pub sessions: usize,
}

/// Runs the scenario.
pub async fn run(
    cloudcore: &Path,
    edgecore: &Path,
    size: u64,
    sessions: usize,
    limit: Duration,
) -> Result<Report, Error> {
    let cloud = CloudCore::start(cloudcore, 4, 32)?;
    let dir: PathBuf = proc::scratch("streams-edge");
    let mut edge = start_joined(edgecore, &cloud, NODE, &dir)?;
    let result = measure(&cloud, &edge, &dir, size, sessions, limit).await;
    edge.kill();
    kill_recorded(&dir);
    drop(edge);
    result
}

/// kubectl reading the whole log, its bytes counted; seconds.
fn kubectl_logs(args: &[String]) -> Result<(f64, u64), Error> {
    let start = Instant::now();
    let mut child = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .args(args)
        .args(["logs", "logger"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let bytes = std::io::copy(&mut out, &mut std::io::sink())?;
    child.wait()?;
    Ok((start.elapsed().as_secs_f64(), bytes))
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        v.get(v.len() / 2).copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// The logger pod's ConfigMap `probe` changed one step after another until `stop` (at least 5
/// steps); each step's time until the edge's metastore holds it (the edge gets ConfigMaps its
/// pods use).
async fn sync_probe(
    cloud: &kube::Client,
    edge_local: &kube::Client,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<f64> {
    let cms: Api<ConfigMap> = Api::namespaced(cloud.clone(), "default");
    let local: Api<ConfigMap> = Api::namespaced(edge_local.clone(), "default");
    let mut out = Vec::new();
    for i in 0.. {
        if *stop.borrow() && i >= 5 {
            break;
        }
        let step = format!("{}-{i}", std::process::id());
        let patch = json!({"data": {"step": step}});
        let start = Instant::now();
        if cms
            .patch(
                "probe",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .is_err()
        {
            break;
        }
        loop {
            let seen = local.get_opt("probe").await.ok().flatten();
            if seen
                .and_then(|c| c.data)
                .is_some_and(|d| d.get("step") == Some(&step))
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

async fn measure(
    cloud: &CloudCore,
    edge: &Daemon,
    dir: &Path,
    size: u64,
    sessions: usize,
    limit: Duration,
) -> Result<Report, Error> {
    let client = cloud.client().await?;
    node_ready(&client, NODE, SCENARIO, limit).await?;
    let metaserver = metaserver_addr(edge)?.to_owned();
    let local = metaserver_client(edge)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let probe: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "probe"}, "data": {"step": "0"}}))?;
    cms.create(&PostParams::default(), &probe).await?;
    let line = "x".repeat(99);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "logger"},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "sh",
            "command": ["/bin/sh", "-c", format!("yes {line} | head -c {size}; exec sleep 3600")],
            "env": [{"name": "STEP", "valueFrom": {"configMapKeyRef": {"name": "probe", "key": "step"}}}]}]}}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(SCENARIO, limit, "the pod Running", || async {
        pods.get_opt("logger")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await?;
    let uid = pods.get("logger").await?.metadata.uid.unwrap_or_default();
    let file = dir.join("pods").join(&uid).join("logs/main_0.log");
    wait_for(SCENARIO, limit, "the log written", || async {
        std::fs::metadata(&file).is_ok_and(|m| m.len() >= size)
    })
    .await?;

    let mut reads = Vec::new();
    let start = Instant::now();
    let copied = std::io::copy(&mut std::fs::File::open(&file)?, &mut std::io::sink())?;
    reads.push((
        "reading the file at the edge".to_owned(),
        start.elapsed().as_secs_f64(),
    ));
    if copied < size {
        return Err("the log is shorter than written".into());
    }
    let edge_args = vec!["--server".to_owned(), format!("http://{metaserver}")];
    let (t, n) = kubectl_logs(&edge_args)?;
    if n < size {
        return Err(format!("kubectl on the metaserver read {n} of {size} bytes").into());
    }
    reads.push(("kubectl logs on the edge's metaserver".to_owned(), t));
    let cloud_args = vec![
        "--kubeconfig".to_owned(),
        cloud.kubeconfig.display().to_string(),
    ];
    let (t, n) = kubectl_logs(&cloud_args)?;
    if n < size {
        return Err(format!("kubectl through the cloud read {n} of {size} bytes").into());
    }
    reads.push(("kubectl logs through the cloud (tunnel)".to_owned(), t));

    // The sync channel, idle and while five log streams run.
    let (_tx, idle_stop) = tokio::sync::watch::channel(true);
    let idle = sync_probe(&client, &local, idle_stop).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let probe = {
        let (client, local) = (client.clone(), local.clone());
        tokio::spawn(async move { sync_probe(&client, &local, stop).await })
    };
    let start = Instant::now();
    let readers: Vec<_> = (0..5)
        .map(|_| {
            let args = cloud_args.clone();
            std::thread::spawn(move || kubectl_logs(&args).map(|(_, n)| n).unwrap_or(0))
        })
        .collect();
    for r in readers {
        let n = r.join().unwrap_or(0);
        if n < size {
            return Err(format!("a concurrent stream read {n} of {size} bytes").into());
        }
    }
    let five = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let busy = probe.await?;
    let (idle_med, idle_max) = median_max(idle);
    let (busy_med, busy_max) = median_max(busy);

    // Idle exec sessions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cloud_pid, edge_pid) = (cloud.pid(), edge.pid());
    let before = (proc::rss_kib(cloud_pid), proc::rss_kib(edge_pid));
    let mut open = Vec::new();
    for _ in 0..sessions {
        open.push(exec_session(cloud).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (proc::rss_kib(cloud_pid), proc::rss_kib(edge_pid));
    // Each still answers: one byte through `cat` and back.
    for ws in open.iter_mut() {
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0u8, b'k'].into(),
        ))
        .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))))
                    if b.first() == Some(&1) =>
                {
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                _ => return Err("an idle exec session did not answer".into()),
            }
        }
    }
    drop(open);
    Ok(Report {
        size,
        reads,
        five,
        sync_ms: (idle_med, idle_max, busy_med, busy_max),
        rss: (before, after),
        sessions,
    })
}

type Session =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// `cat` in the logger pod over WebSocket v5, as kubectl 1.30+ opens it.
async fn exec_session(cloud: &CloudCore) -> Result<Session, Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let certs = cloud.dir().join("certs");
    let chain = kubeedge_core::transport::tls::certs_from_pem(&std::fs::read_to_string(
        certs.join("admin.crt"),
    )?)?;
    let key = kubeedge_core::transport::tls::key_from_pem(&std::fs::read_to_string(
        certs.join("admin.key"),
    )?)?;
    let tls = kubeedge_core::transport::tls::client_config(&cloud.ca()?.cert(), chain, key)?;
    let addr = cloud
        .api_url
        .strip_prefix("https://")
        .ok_or("the API is not https")?
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1".to_owned())?,
            tcp,
        )
        .await?;
    let mut request = format!(
        "wss://{addr}/api/v1/namespaces/default/pods/logger/exec?command=cat&stdin=true&stdout=true"
    )
    .into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "v5.channel.k8s.io".parse()?);
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

/// Prints the tables.
pub fn print(r: &Report) {
    let mb = r.size as f64 / 1e6;
    table(
        Some(&format!(
            "Log streaming: {:.0} MB of one pod's log, read whole once each way",
            mb
        )),
        &["how", "seconds", "MB/s"],
        1,
        r.reads
            .iter()
            .map(|(how, t)| vec![how.clone(), format!("{t:.2}"), format!("{:.0}", mb / t)]),
    );
    println!();
    println!(
        "Five kubectl logs through the cloud at once: {:.2} s for {:.0} MB ({:.0} MB/s together).",
        r.five,
        5.0 * mb,
        5.0 * mb / r.five
    );
    table(
        Some("The sync channel meanwhile: a ConfigMap from create to the edge's metastore"),
        &["", "median ms", "max ms"],
        1,
        [
            vec![
                "idle".to_owned(),
                format!("{:.1}", r.sync_ms.0),
                format!("{:.1}", r.sync_ms.1),
            ],
            vec![
                "during five log streams".to_owned(),
                format!("{:.1}", r.sync_ms.2),
                format!("{:.1}", r.sync_ms.3),
            ],
        ],
    );
    let ((cb, eb), (ca, ea)) = r.rss;
    table(
        Some(&format!(
            "{} idle exec sessions (WebSocket v5, cat)",
            r.sessions
        )),
        &[
            "process",
            "RSS before MiB",
            "RSS with sessions MiB",
            "KiB per session",
        ],
        1,
        [("cloudcore", cb, ca), ("edgecore", eb, ea)].map(|(name, b, a)| {
            vec![
                name.to_owned(),
                mib(b),
                mib(a),
                format!(
                    "{:.1}",
                    a.saturating_sub(b) as f64 / r.sessions.max(1) as f64
                ),
            ]
        }),
    );
}
