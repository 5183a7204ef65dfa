//! The soak: a real cloudcore and a real edgecore (process runtime) under steady churn for a long
//! time, sampling both daemons' RSS and open file descriptors, to show whether anything grows.
//!
//! Churn, `rate` steps a second (`--soak-rate`, default 1), each: one of 20 ConfigMaps updated
//! through the cloud's API, the node's pods and ConfigMaps listed through the edge's metaserver;
//! every fifth step a pod created and the oldest of more than 10 deleted (each a real process
//! started and stopped).
//! Samples every `sample` into `soak.csv`, plotted into `soak-rss.svg` and `soak-fds.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use plotters::prelude::*;
use serde_json::json;

use super::cloud::CloudCore;
use super::proc::{self, Daemon};
use super::{Error, table};

const NODE: &str = "soak-edge";
const CONFIGMAPS: usize = 20;
const PODS: usize = 10;

/// One sample of both daemons.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the churn started.
    pub at: Duration,
    /// cloudcore RSS, KiB, and open file descriptors.
    pub cloud: (u64, usize),
    /// edgecore RSS, KiB, and open file descriptors.
    pub edge: (u64, usize),
    /// Churn operations done so far (ConfigMap updates, pod creates and deletes, local lists).
    pub ops: u64,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn sample(cloud: u32, edge: u32, at: Duration, ops: u64) -> Sample {
    Sample {
        at,
        cloud: (proc::rss_kib(cloud), fds(cloud)),
        edge: (proc::rss_kib(edge), fds(edge)),
        ops,
    }
}

/// Runs the soak for `length`, sampling every `every`; writes the CSV and plots into `dir`.
pub async fn run(
    cloudcore: &Path,
    edgecore: &Path,
    length: Duration,
    every: Duration,
    rate: u32,
    dir: &Path,
) -> Result<Vec<Sample>, Error> {
    let cloud = CloudCore::start(cloudcore, 4, 32)?;
    let data: PathBuf = proc::scratch("soak-edge");
    let mut edge = super::edgecore::start_joined(edgecore, &cloud, NODE, &data)?;
    let result = churn(&cloud, &edge, length, every, rate).await;
    edge.kill();
    super::edgecore::kill_recorded(&data);
    drop(edge);
    let samples = result?;
    std::fs::create_dir_all(dir)?;
    let mut csv =
        String::from("seconds,cloudcore_rss_kib,cloudcore_fds,edgecore_rss_kib,edgecore_fds,ops\n");
    for s in &samples {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            s.at.as_secs(),
            s.cloud.0,
            s.cloud.1,
            s.edge.0,
            s.edge.1,
            s.ops
        );
    }
    std::fs::write(dir.join("soak.csv"), csv)?;
    plot(dir, &samples)?;
    Ok(samples)
}

async fn churn(
    cloud: &CloudCore,
    edge: &Daemon,
    length: Duration,
    every: Duration,
    rate: u32,
) -> Result<Vec<Sample>, Error> {
    let client = cloud.client().await?;
    let local = super::edgecore::metaserver_client(edge)?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let local_pods: Api<Pod> = Api::namespaced(local.clone(), "default");
    let local_cms: Api<ConfigMap> = Api::namespaced(local, "default");
    for i in 0..CONFIGMAPS {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("soak-{i:02}")}, "data": {"n": "0"}}),
        )?;
        cms.create(&PostParams::default(), &cm).await?;
    }
    let (cloud_pid, edge_pid) = (cloud.pid(), edge.pid());
    let start = Instant::now();
    let mut samples = vec![sample(cloud_pid, edge_pid, Duration::ZERO, 0)];
    let mut next_sample = every;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let (mut n, mut ops, mut created, mut deleted) = (0u64, 0u64, 0usize, 0usize);
    while start.elapsed() < length {
        tick.tick().await;
        n += 1;
        let name = format!("soak-{:02}", n as usize % CONFIGMAPS);
        let patch = json!({"data": {"n": n.to_string(), "payload": "x".repeat(512)}});
        cms.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // The metaserver serves what the edge holds; its answers are not checked here (the
        // tests do that), only that it keeps answering.
        local_pods.list(&ListParams::default()).await?;
        local_cms.list(&ListParams::default()).await?;
        ops += 3;
        if n % 5 == 0 {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("soak-pod-{created:06}")},
                "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "sleep", "command": ["sleep"], "args": ["3600"]}]}}))?;
            pods.create(&PostParams::default(), &pod).await?;
            created += 1;
            ops += 1;
            if created - deleted > PODS {
                pods.delete(
                    &format!("soak-pod-{deleted:06}"),
                    &DeleteParams::default().grace_period(1),
                )
                .await?;
                deleted += 1;
                ops += 1;
            }
        }
        if start.elapsed() >= next_sample {
            samples.push(sample(cloud_pid, edge_pid, start.elapsed(), ops));
            next_sample += every;
        }
    }
    samples.push(sample(cloud_pid, edge_pid, start.elapsed(), ops));
    Ok(samples)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(path: &Path, title: &str, y_desc: &str, series: &[Series<'_>]) -> Result<(), Error> {
    let x_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes of churn")
        .y_desc(y_desc)
        .draw()?;
    for (label, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot(dir: &Path, samples: &[Sample]) -> Result<(), Error> {
    let minutes = |s: &Sample| s.at.as_secs_f64() / 60.0;
    let series = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (minutes(s), f(s))).collect()
    };
    chart(
        &dir.join("soak-rss.svg"),
        "Soak: resident memory under steady churn",
        "RSS (MiB)",
        &[
            ("cloudcore", BLUE, series(&|s| mib(s.cloud.0))),
            ("edgecore", RED, series(&|s| mib(s.edge.0))),
        ],
    )?;
    chart(
        &dir.join("soak-fds.svg"),
        "Soak: open file descriptors under steady churn",
        "file descriptors",
        &[
            ("cloudcore", BLUE, series(&|s| s.cloud.1 as f64)),
            ("edgecore", RED, series(&|s| s.edge.1 as f64)),
        ],
    )?;
    Ok(())
}

/// The table: a row per tenth of the run, and the growth after the warm-up (the first sixth).
pub fn print(samples: &[Sample], length: Duration) {
    println!("# soak: cloudcore + edgecore (process runtime) under steady churn");
    let step = (samples.len() / 10).max(1);
    let mut rows: Vec<Vec<String>> = samples
        .iter()
        .step_by(step)
        .chain(samples.last())
        .map(|s| {
            vec![
                format!("{:.1}", s.at.as_secs_f64() / 60.0),
                format!("{:.1}", mib(s.cloud.0)),
                s.cloud.1.to_string(),
                format!("{:.1}", mib(s.edge.0)),
                s.edge.1.to_string(),
                s.ops.to_string(),
            ]
        })
        .collect();
    rows.dedup();
    table(
        None,
        &[
            "minute",
            "cloudcore RSS MiB",
            "cloudcore fds",
            "edgecore RSS MiB",
            "edgecore fds",
            "churn ops",
        ],
        1,
        rows,
    );
    let warm = samples
        .iter()
        .find(|s| s.at >= length / 6)
        .or(samples.first());
    if let (Some(w), Some(last)) = (warm, samples.last()) {
        let growth = |a: u64, b: u64| (b as f64 - a as f64) / 1024.0;
        println!();
        println!(
            "After warm-up ({:.0} min → {:.0} min): cloudcore RSS {:+.1} MiB, fds {:+}; edgecore RSS {:+.1} MiB, fds {:+}.",
            w.at.as_secs_f64() / 60.0,
            last.at.as_secs_f64() / 60.0,
            growth(w.cloud.0, last.cloud.0),
            last.cloud.1 as i64 - w.cloud.1 as i64,
            growth(w.edge.0, last.edge.0),
            last.edge.1 as i64 - w.edge.1 as i64,
        );
    }
}
