//! Child processes of the harness and their footprint, read from `/proc`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Error;

/// Resident memory of `pid`, KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Anonymous resident memory of `pid` (heap, stacks), KiB.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// File-backed resident memory of `pid` (mapped code and data of its binary and libraries), KiB.
pub fn rss_file_kib(pid: u32) -> u64 {
    status_kib(pid, "RssFile:")
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of `pid` so far, seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// `key=value` out of a ready line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A daemon started by the harness: killed (and its scratch directory removed) on drop.
pub struct Daemon {
    child: Child,
    /// Its scratch directory.
    pub dir: PathBuf,
    /// The line it printed when ready.
    pub ready: String,
}

impl Daemon {
    /// Starts `command` (stdout piped) and waits for the line starting with `ready`.
    pub fn start(mut command: Command, dir: PathBuf, ready: &str) -> Result<Daemon, Error> {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", command.get_program()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with(ready) => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(
                        format!("{:?} ended before it was ready", command.get_program()).into(),
                    );
                }
            }
        };
        Ok(Daemon {
            child,
            dir,
            ready: line,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it: SIGTERM, SIGKILL after 5 s; waits for it (its scratch directory stays until
    /// drop).
    pub fn kill(&mut self) {
        // Already reaped: its PID may belong to another process by now.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Kills it with SIGKILL, as a machine failure would, and reaps it.
    pub fn kill9(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh scratch directory name under the system's temporary directory.
pub fn scratch(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "kubeedge-fleet-{what}-{}-{}",
        std::process::id(),
        kubeedge_core::transport::driver::random_seed()
    ))
}

/// A binary next to this one, unless given.
pub fn sibling(given: Option<PathBuf>, name: &str) -> Result<PathBuf, Error> {
    match given {
        Some(b) => Ok(b),
        None => Ok(std::env::current_exe()?
            .parent()
            .ok_or("no directory")?
            .join(name)),
    }
}

/// Size of `bin` in bytes, and of a stripped copy of it (`strip` from binutils; `None` without).
pub fn binary_sizes(bin: &Path) -> Result<(u64, Option<u64>), Error> {
    let size = std::fs::metadata(bin)?.len();
    let copy = scratch("strip");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(bin)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&copy).ok())
        .map(|m| m.len());
    let _ = std::fs::remove_file(&copy);
    Ok((size, stripped))
}
