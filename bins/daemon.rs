//! What the daemon binaries (cloudcore, edgecore, quickstart) share, compiled into each with
//! `#[path]`: the command-line rules (`cli.rs`), logging to stderr, the runtime, waiting for a
//! signal, and error reporting.

use std::future::Future;
use std::process::ExitCode;

#[path = "cli.rs"]
pub mod cli;

/// Logs to stderr (`RUST_LOG`, else `default_filter`), runs `main` on a multi-threaded runtime,
/// and turns its outcome into the exit code: 0, or 1 with `<name>: <error chain>` on stderr.
pub fn run<F>(name: &str, default_filter: &str, main: F) -> ExitCode
where
    F: Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::outcome(name, runtime.block_on(main))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
