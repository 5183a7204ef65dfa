//! Simulated edges in worker processes: one process may hold 20,000 files here, so a fleet
//! larger than that runs its edges in several `fleet --sim-worker` processes, each holding a
//! range of the nodes and reporting to the harness line by line on stdout:
//!
//! * `ready` once its node certificates are issued; it dials after the harness writes `go`;
//! * `R <node> <µs>`: the node's registration was answered;
//! * `C <node> <replica> <µs>`: the node connected to that replica;
//! * `A <node> <version|-> <bytes> <µs> <key>`: an object change reached the node.
//!
//! Times are microseconds since the Unix epoch (the harness turns them back into instants on the
//! same machine). `storm <n>` on stdin drops every connection (they dial again with their
//! inventory); end of stdin ends the worker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeedge_core::pki::Ca;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::Error;
use super::sim::{self, Behaviour, Report};

/// What a worker is told on its command line.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The first node's fleet-wide index.
    pub first: usize,
    /// Nodes it holds.
    pub count: usize,
    /// The cluster CA's directory.
    pub ca_dir: PathBuf,
    /// cloudhub at each replica.
    pub urls: Vec<String>,
    /// Nodes preferring the first replica (see [`Behaviour::primary_first`]).
    pub primary_first: usize,
    /// Dials at once.
    pub dials: usize,
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("sim-{i:06}")
}

fn micros(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// An instant of this process from microseconds since the epoch.
fn instant(us: u128) -> Instant {
    let then = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX));
    let now = Instant::now();
    match SystemTime::now().duration_since(then) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(ahead) => now + ahead.duration(),
    }
}

/// The worker process: runs its nodes until stdin ends.
pub async fn serve(a: Assignment) -> Result<(), Error> {
    let ca = Arc::new(Ca::load_or_create(&a.ca_dir, SystemTime::now())?);
    let names = (a.first..a.first + a.count)
        .map(|i| (i, node_name(i)))
        .collect();
    let edges = sim::edges_at(ca, names).await?;
    let (mut behaviour, mut reports, storm) =
        Behaviour::new(String::new(), a.dials.max(1), Duration::ZERO);
    behaviour.urls = Arc::from(a.urls);
    behaviour.primary_first = a.primary_first;
    let mut out = BufWriter::new(tokio::io::stdout());
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await? {
        Some(l) if l == "go" => {}
        _ => return Ok(()),
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (k, e) in edges.into_iter().enumerate() {
        tasks.spawn(sim::run_edge(a.first + k, e, behaviour.clone()));
    }
    drop(behaviour);
    // Reports are made with this process's instants: told as wall-clock time.
    let (base_i, base_s) = (Instant::now(), SystemTime::now());
    let wall = |at: Instant| match at.checked_duration_since(base_i) {
        Some(d) => micros(base_s + d),
        None => micros(base_s - base_i.duration_since(at)),
    };
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(l) if l.starts_with("storm") => {
                    let n = l.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
                    storm.send(n)?;
                }
                Some(_) => {}
                None => break,
            },
            report = reports.recv() => {
                let Some(mut r) = report else { break };
                loop {
                    let line = match r {
                        Report::Registered { at } => format!("R 0 {}\n", wall(at)),
                        Report::Connected { node, replica, at } => {
                            format!("C {node} {replica} {}\n", wall(at))
                        }
                        Report::Applied { node, key, version, bytes, at } => {
                            let v = version.map_or_else(|| "-".to_owned(), |v| v.to_string());
                            format!("A {node} {v} {bytes} {} {key}\n", wall(at))
                        }
                    };
                    out.write_all(line.as_bytes()).await?;
                    match reports.try_recv() {
                        Ok(next) => r = next,
                        Err(_) => break,
                    }
                }
                out.flush().await?;
            }
        }
    }
    tasks.abort_all();
    Ok(())
}

/// A report line from a worker.
fn parse(line: &str) -> Option<Report> {
    let mut w = line.split(' ');
    let tag = w.next()?;
    let mut num = || -> Option<u128> { w.next()?.parse().ok() };
    match tag {
        "R" => {
            num()?;
            Some(Report::Registered {
                at: instant(num()?),
            })
        }
        "C" => {
            let node = usize::try_from(num()?).ok()?;
            let replica = usize::try_from(num()?).ok()?;
            Some(Report::Connected {
                node,
                replica,
                at: instant(num()?),
            })
        }
        "A" => {
            let node = w.next()?.parse().ok()?;
            let version = match w.next()? {
                "-" => None,
                v => Some(v.parse().ok()?),
            };
            let bytes = w.next()?.parse().ok()?;
            let at = instant(w.next()?.parse().ok()?);
            let key = w.next()?.to_owned();
            Some(Report::Applied {
                node,
                key,
                version,
                bytes,
                at,
            })
        }
        _ => None,
    }
}

/// The worker processes of one fleet, killed on drop.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl Workers {
    /// Starts `procs` workers of `bin` (this harness) sharing `nodes` nodes, and waits until each
    /// has its certificates. Their reports arrive on the receiver.
    pub async fn start(
        bin: &Path,
        procs: usize,
        nodes: usize,
        template: &Assignment,
    ) -> Result<(Workers, mpsc::UnboundedReceiver<Report>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let procs = procs.clamp(1, nodes.max(1));
        let mut workers = Workers {
            children: Vec::new(),
            stdins: Vec::new(),
        };
        let mut readies = Vec::new();
        for p in 0..procs {
            let first = nodes * p / procs;
            let count = nodes * (p + 1) / procs - first;
            let mut child = Command::new(bin)
                .arg("--sim-worker")
                .args(["--sim-first", &first.to_string()])
                .args(["--sim-count", &count.to_string()])
                .arg("--sim-ca")
                .arg(&template.ca_dir)
                .args(["--sim-urls", &template.urls.join(",")])
                .args(["--sim-primary-first", &template.primary_first.to_string()])
                .args(["--concurrency", &template.dials.max(1).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting a sim worker: {e}"))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            workers.children.push(child);
            workers.stdins.push(stdin);
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            readies.push(ready);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut ready_tx = Some(ready_tx);
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == "ready" {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    } else if let Some(r) = parse(&l) {
                        if tx.send(r).is_err() {
                            break;
                        }
                    } else {
                        eprintln!("fleet: a sim worker said {l:?}");
                    }
                }
            });
        }
        for r in readies {
            r.await
                .map_err(|_| "a sim worker ended before it was ready")?;
        }
        Ok((workers, rx))
    }

    /// Tells every worker `line`.
    async fn tell(&mut self, line: &str) -> Result<(), Error> {
        for s in &mut self.stdins {
            s.write_all(format!("{line}\n").as_bytes()).await?;
            s.flush().await?;
        }
        Ok(())
    }

    /// Lets the nodes dial.
    pub async fn go(&mut self) -> Result<(), Error> {
        self.tell("go").await
    }

    /// Drops every connection (storm `n`).
    pub async fn storm(&mut self, n: u64) -> Result<(), Error> {
        self.tell(&format!("storm {n}")).await
    }

    /// Their process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse() {
        let now = micros(SystemTime::now());
        match parse(&format!("A 7 42 512 {now} default/pod/p-000007-000")) {
            Some(Report::Applied {
                node,
                key,
                version,
                bytes,
                at,
            }) => {
                assert_eq!(
                    (node, key.as_str(), version, bytes),
                    (7, "default/pod/p-000007-000", Some(42), 512)
                );
                assert!(at.elapsed() < Duration::from_secs(5));
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(
            parse(&format!("A 1 - 10 {now} null/node/x")),
            Some(Report::Applied { version: None, .. })
        ));
        assert!(matches!(
            parse(&format!("C 3 2 {now}")),
            Some(Report::Connected {
                node: 3,
                replica: 2,
                ..
            })
        ));
        assert!(matches!(
            parse(&format!("R 0 {now}")),
            Some(Report::Registered { .. })
        ));
        assert!(parse("A 1 x").is_none());
        assert!(parse("storm").is_none());
    }
}
