//! The command-line rules every binary follows (cloudcore, edgecore, quickstart, keadm, fleet),
//! compiled into each with `#[path]`: usage errors exit 64, failures print
//! `<name>: <error chain>` and exit 1.

use std::process::ExitCode;

/// Parses the command line; on a usage error prints it and gives exit code 64 (help and version
/// print and give 0).
pub fn parse<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(64)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// This machine's host name (`/proc/sys/kernel/hostname`, trimmed), the default of names that
/// some binaries take (an edge node's, a replica's).
#[allow(dead_code)] // not every binary names anything after the host
pub fn hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned())
}

/// The exit code of an outcome: 0, or 1 with `<name>: <error chain>` on stderr.
pub fn outcome(name: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", kubeedge_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
