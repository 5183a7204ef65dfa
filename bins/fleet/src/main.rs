//! `fleet`: the scale harness. It starts real `cloudcore` processes (embedded control plane, on
//! loopback) and simulates edge nodes in this process: each one a real mutual-TLS WebSocket to
//! cloudhub from its own 127.x.y.z source address, speaking the real sync protocol with an
//! in-memory store. Scenarios, each printed as a markdown table with cloudcore's RSS and CPU read
//! from `/proc`:
//!
//! * `fleet`, once per size in `--nodes` (a fresh cloudcore each time):
//!   1. **connect**: every node connects and registers its Node (an uplink the cloud answers);
//!      per-node time to registered, and cloudcore's memory per connected node.
//!      Then (table 1b, with `--open-loop-rates R1,R2,...`) the **open loop**: pods created at
//!      each fixed rate for `--open-loop-secs`, round robin over the nodes, each create due at
//!      its time whether or not earlier ones were answered; latency from when it was due until
//!      its edge held it (p50, p99, max): queueing anywhere shows, the client's included.
//!   2. **fan-out**: `--pods-per-node` pods per node created through the API; time until every
//!      edge holds every pod; per-object latency from the create request to the edge.
//!   3. **steady**: keepalives only for `--steady-secs`: cloudcore CPU and RSS.
//!   4. **reconnect storm**: every connection dropped at once, and one pod per node changed;
//!      every edge dials again with its inventory: time until all hold the changed pod, and how
//!      many objects (and message bytes) each node was sent again.
//! * `link`: one connection's throughput, cloud → edge with acks, for each of `--link-windows`
//!   (1 is upstream cloudhub's behaviour): a node comes back to `--link-objects` pods made while
//!   it was away; its edge acks in group commits of `--commit-ms`.
//! * `edgecore`: a real `edgecore` (process runtime) joined to a real cloudcore: RSS and CPU idle
//!   and with `--edgecore-pods` pods running; binary sizes as built and stripped.
//!
//! * `soak` (not run by default): a real cloudcore and edgecore under steady churn (ConfigMap
//!   updates, pods created and deleted, metaserver lists) for `--soak-secs`: both daemons' RSS and
//!   open file descriptors every `--soak-sample-secs`, into `soak.csv`, `soak-rss.svg` and
//!   `soak-fds.svg` under `--plot-dir` (default the working directory).
//! * `workloads` (not run by default): `--workload-nodes` simulated edges that report the pods
//!   they receive Running; one Deployment of `--workload-pods` replicas: scheduler decisions per
//!   second and the time until every replica is available.
//!
//! * `datastore` (not run by default): the embedded API's creates on redb and on a real etcd
//!   (Debian's etcd-server) side by side: writes per second and latency at several concurrencies.
//!
//! `--plot-dir D` draws the fleet runs against N into `D/fleet-latency.svg` and
//! `D/fleet-memory.svg`. Release builds give the numbers worth reading:
//! `cargo build --release -p fleet -p cloudcore -p edgecore && target/release/fleet`.
//! Exit codes: 0, 1 when a scenario does not complete in time, 64 bad usage.

#[path = "../../cli.rs"]
mod cli;
mod cloud;
mod datastore;
mod edgecore;
mod fleet;
mod link;
mod plot;
mod proc;
mod sim;
mod soak;
mod streams;
mod worker;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "fleet", about = "kubeedge-rs scale harness")]
struct Cli {
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "fleet,link,edgecore",
        value_parser = ["fleet", "link", "edgecore", "soak", "workloads", "streams", "datastore"])]
    scenarios: Vec<String>,
    /// Fleet sizes (simulated edge nodes), one fleet run each.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    nodes: Vec<usize>,
    /// cloudcore replicas holding the fleet's edges, over the embedded API of one more cloudcore
    /// that holds none (0: one cloudcore does both). With two or more, the fleet scenario ends
    /// by killing the first replica with SIGKILL (table 5).
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// Nodes that prefer the first replica, the one killed (default: an even share).
    #[arg(long)]
    killed_replica_nodes: Option<usize>,
    /// Processes the simulated edges run in (0: the harness's own; one process may hold
    /// 20,000 files here, so 100,000 nodes need at least six).
    #[arg(long, default_value_t = 0)]
    sim_procs: usize,
    /// (Internal) run as a worker holding simulated edges: reports on stdout.
    #[arg(long, hide = true)]
    sim_worker: bool,
    /// (Internal) the worker's first node.
    #[arg(long, hide = true, default_value_t = 0)]
    sim_first: usize,
    /// (Internal) the worker's node count.
    #[arg(long, hide = true, default_value_t = 0)]
    sim_count: usize,
    /// (Internal) the cluster CA's directory.
    #[arg(long, hide = true)]
    sim_ca: Option<PathBuf>,
    /// (Internal) cloudhub at each replica.
    #[arg(long, hide = true, value_delimiter = ',')]
    sim_urls: Vec<String>,
    /// (Internal) nodes preferring the first replica.
    #[arg(long, hide = true, default_value_t = 0)]
    sim_primary_first: usize,
    /// Open-loop create rates (pods/s) of the fleet scenario, one window each after registration
    /// (none by default).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    open_loop_rates: Vec<u32>,
    /// Length of each open-loop window, seconds.
    #[arg(long, default_value_t = 60)]
    open_loop_secs: u64,
    /// Pods per node in the fan-out scenario.
    #[arg(long, default_value_t = 10)]
    pods_per_node: usize,
    /// Length of the steady-state window, seconds.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// Concurrent dials (API requests: at most 32 of them).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// The cloudcore binary. Default: next to this one.
    #[arg(long)]
    cloudcore: Option<PathBuf>,
    /// The edgecore binary. Default: next to this one.
    #[arg(long)]
    edgecore: Option<PathBuf>,
    /// Limit for each scenario, seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Where to draw the fleet plots (SVG).
    #[arg(long)]
    plot_dir: Option<PathBuf>,
    /// Objects in the one-connection throughput scenario.
    #[arg(long, default_value_t = 5000)]
    link_objects: usize,
    /// Windows compared in the one-connection throughput scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    link_windows: Vec<usize>,
    /// The simulated edge store's commit time in the throughput scenario, milliseconds.
    #[arg(long, default_value_t = 3)]
    commit_ms: u64,
    /// Pods run on the real edgecore in its footprint scenario.
    #[arg(long, default_value_t = 100)]
    edgecore_pods: usize,
    /// Sampling window of the edgecore footprint, seconds.
    #[arg(long, default_value_t = 20)]
    edgecore_secs: u64,
    /// Length of the soak, seconds.
    #[arg(long, default_value_t = 3600)]
    soak_secs: u64,
    /// Sampling period of the soak, seconds.
    #[arg(long, default_value_t = 30)]
    soak_sample_secs: u64,
    /// Churn steps per second in the soak (each: a ConfigMap update and two metaserver lists; a
    /// pod created, and one deleted, every fifth step).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    soak_rate: u32,
    /// Simulated edge nodes in the workloads scenario.
    #[arg(long, default_value_t = 1000)]
    workload_nodes: usize,
    /// Replicas of the workloads scenario's Deployment.
    #[arg(long, default_value_t = 10_000)]
    workload_pods: usize,
    /// Log size of the streams scenario, MiB.
    #[arg(long, default_value_t = 100)]
    stream_mib: u64,
    /// Idle exec sessions of the streams scenario.
    #[arg(long, default_value_t = 100)]
    stream_sessions: usize,
    /// Creates per datastore and concurrency in the datastore scenario.
    #[arg(long, default_value_t = 2000)]
    datastore_writes: usize,
    /// Creates in flight in the datastore scenario, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    datastore_concurrency: Vec<usize>,
}

/// Prints a markdown table after a blank line, under `## title` if given; the first `left`
/// columns are left-aligned, the others right-aligned.
fn table(
    title: Option<&str>,
    head: &[&str],
    left: usize,
    rows: impl IntoIterator<Item = Vec<String>>,
) {
    println!();
    if let Some(t) = title {
        println!("## {t}");
        println!();
    }
    println!("| {} |", head.join(" | "));
    let align: Vec<&str> = (0..head.len())
        .map(|i| if i < left { "---" } else { "---:" })
        .collect();
    println!("|{}|", align.join("|"));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// Milliseconds, one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// KiB as MiB, one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

async fn run(cli: Cli) -> Result<(), Error> {
    if cli.sim_worker {
        return worker::serve(worker::Assignment {
            first: cli.sim_first,
            count: cli.sim_count,
            ca_dir: cli.sim_ca.ok_or("--sim-worker needs --sim-ca")?,
            urls: cli.sim_urls,
            primary_first: cli.sim_primary_first,
            dials: usize::from(cli.concurrency),
        })
        .await;
    }
    let limit = Duration::from_secs(cli.timeout_secs);
    let cloudcore = proc::sibling(cli.cloudcore.clone(), "cloudcore")?;
    let wants = |s: &str| cli.scenarios.iter().any(|x| x == s);
    let mut failure = None;
    if wants("fleet") {
        let mut rows = Vec::new();
        // cloudcore's default node grace.
        let grace = Duration::from_secs(40);
        for &nodes in &cli.nodes {
            let settings = fleet::Settings {
                nodes,
                pods_per_node: cli.pods_per_node,
                steady: Duration::from_secs(cli.steady_secs),
                concurrency: usize::from(cli.concurrency),
                limit,
                open_loop_rates: cli.open_loop_rates.clone(),
                open_loop: Duration::from_secs(cli.open_loop_secs),
                replicas: cli.replicas,
                primary_first: match (cli.replicas, cli.killed_replica_nodes) {
                    (0 | 1, _) | (_, None) => 0,
                    (_, Some(k)) => k.min(nodes),
                },
                sim_procs: cli.sim_procs,
                harness: std::env::current_exe()?,
                grace,
            };
            match fleet::run(&cloudcore, &settings).await {
                Ok(row) => rows.push(row),
                Err(e) => {
                    // Keep what the smaller fleets measured; say where it stopped.
                    failure = Some(format!("fleet of {nodes}: {e}"));
                    break;
                }
            }
        }
        let sizes = cli
            .nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if cli.replicas == 0 {
            println!("# fleet: {sizes} simulated edge nodes against one cloudcore process");
        } else {
            println!(
                "# fleet: {sizes} simulated edge nodes across {} cloudcore replicas over the embedded API of one more (RSS and CPU summed over all {})",
                cli.replicas,
                cli.replicas + 1
            );
        }
        println!();
        fleet::print(&rows, cli.pods_per_node);
        // The bar: no node stays not Ready longer than the grace. How many turned at
        // all is in table 5.
        if let Some((nodes, k)) = rows.iter().find_map(|r| {
            Some((
                r.nodes,
                r.kill.as_ref().filter(|k| k.longest_not_ready > grace)?,
            ))
        }) {
            failure.get_or_insert(format!(
                "fleet of {nodes}: after a replica was killed, a node stayed not Ready for {:.1} s, longer than the {} s grace ({} turned not Ready)",
                k.longest_not_ready.as_secs_f64(),
                grace.as_secs(),
                k.not_ready
            ));
        }
        if let Some(dir) = &cli.plot_dir {
            plot::write(dir, &rows)?;
            println!();
            println!(
                "Plots: {}/fleet-latency.svg, fleet-memory.svg (and fleet-open-loop.svg with open-loop windows)",
                dir.display()
            );
        }
    }
    if failure.is_none() && wants("link") {
        let commit = Duration::from_millis(cli.commit_ms);
        let mut rows = Vec::new();
        for &w in &cli.link_windows {
            rows.push(link::run(&cloudcore, w.max(1), cli.link_objects, commit, limit).await?);
        }
        link::print(&rows, commit);
    }
    if failure.is_none() && wants("edgecore") {
        let edgecore = proc::sibling(cli.edgecore.clone(), "edgecore")?;
        let window = Duration::from_secs(cli.edgecore_secs);
        let report = edgecore::run(&cloudcore, &edgecore, cli.edgecore_pods, window, limit).await?;
        edgecore::print(&report);
    }
    if failure.is_none() && wants("soak") {
        let edgecore = proc::sibling(cli.edgecore.clone(), "edgecore")?;
        let length = Duration::from_secs(cli.soak_secs);
        let dir = cli.plot_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let samples = soak::run(
            &cloudcore,
            &edgecore,
            length,
            Duration::from_secs(cli.soak_sample_secs.max(1)),
            cli.soak_rate,
            &dir,
        )
        .await?;
        soak::print(&samples, length);
        println!();
        println!(
            "Data and plots: {}/soak.csv, soak-rss.svg, soak-fds.svg",
            dir.display()
        );
    }
    if failure.is_none() && wants("workloads") {
        let report =
            workloads::run(&cloudcore, cli.workload_nodes, cli.workload_pods, limit).await?;
        workloads::print(&report);
    }
    if failure.is_none() && wants("streams") {
        let edgecore = proc::sibling(cli.edgecore.clone(), "edgecore")?;
        let report = streams::run(
            &cloudcore,
            &edgecore,
            cli.stream_mib << 20,
            cli.stream_sessions,
            limit,
        )
        .await?;
        streams::print(&report);
    }
    if failure.is_none() && wants("datastore") {
        let rows = datastore::run(
            &cloudcore,
            cli.datastore_writes,
            &cli.datastore_concurrency,
            limit,
        )
        .await?;
        datastore::print(&rows);
        if let Some(dir) = &cli.plot_dir {
            plot::datastore(dir, &rows)?;
            println!();
            println!("Plots: {}/datastore.svg, datastore-p99.svg", dir.display());
        }
    }
    match failure {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Send + Sync were for the tasks; the report needs neither.
    // Interrupted (SIGINT, SIGTERM): the run is dropped, and with it every daemon and worker it
    // started (they are killed on drop), so none is left behind.
    let result = rt
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = run(cli) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
                _ = term.recv() => Err("terminated".into()),
            }
        })
        .map_err(|e| -> Box<dyn std::error::Error> { e });
    cli::outcome("fleet", result)
}
