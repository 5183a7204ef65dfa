//! What the daemon binaries (cloudcore, edgecore, quickstart) share, compiled into each with
//! `#[path]`: logging to stderr, the runtime, waiting for a signal, and error reporting.

use std::future::Future;
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
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", kubeedge_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
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
