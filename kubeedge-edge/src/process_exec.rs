//! `kubectl exec` into a process-runtime pod: the command runs on the host in the container's
//! working directory and environment, with pipes for stdin, stdout and stderr, or with a
//! pseudo-terminal for `-t` (made the command's controlling terminal through util-linux's
//! `setsid --ctty` where present; resized from the client's resize channel). The command is
//! killed when the client goes away.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use kubeedge_core::streaming::channel::{
    self, CLOSE, Duplex, ERROR, Frame, RESIZE, STDERR, STDIN, STDOUT, TerminalSize,
};
use kubeedge_core::streaming::remote::StreamOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const SETSID: &str = "/usr/bin/setsid";

/// Starts `cmd`; the session's frames go both ways through the returned duplex.
pub(crate) fn start(
    cmd: &[String],
    working_dir: &Path,
    env: &[(String, String)],
    options: StreamOptions,
) -> Result<Duplex, String> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| "no command given".to_owned())?;
    if options.tty {
        return start_tty(program, args, working_dir, env, options);
    }
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(working_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(pipe(options.stdin))
        .stdout(pipe(options.stdout))
        .stderr(pipe(options.stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {program:?}: {e}"))?;
    let (ours, theirs) = channel::duplex(16);
    let Duplex { tx, mut rx } = theirs;
    let mut stdin = child.stdin.take();
    let (hangup, hung_up) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _hangup = hangup;
        while let Some(f) = rx.recv().await {
            match f.channel {
                STDIN => {
                    if let Some(s) = &mut stdin
                        && s.write_all(&f.data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                CLOSE if f.data.first() == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut pumps = Vec::new();
        if let Some(out) = stdout {
            pumps.push(tokio::spawn(pump(out, STDOUT, tx.clone())));
        }
        if let Some(err) = stderr {
            pumps.push(tokio::spawn(pump(err, STDERR, tx.clone())));
        }
        // A client that went away ends the command (the child is killed when dropped).
        let status = tokio::select! {
            s = child.wait() => s,
            _ = tx.closed() => return,
            _ = hung_up => return,
        };
        for p in pumps {
            let _ = p.await;
        }
        let _ = tx.send(outcome(status)).await;
    });
    Ok(ours)
}

/// The error channel's last frame: the command's exit status (128 + signal when killed).
fn outcome(status: std::io::Result<std::process::ExitStatus>) -> Frame {
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
        Err(_) => 137,
    };
    Frame::new(ERROR, channel::exit_status(code).to_string())
}

async fn pump<R: AsyncRead + Unpin>(mut r: R, ch: u8, tx: mpsc::Sender<Frame>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(Frame::new(ch, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn start_tty(
    program: &str,
    args: &[String],
    working_dir: &Path,
    env: &[(String, String)],
    options: StreamOptions,
) -> Result<Duplex, String> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let io = |what: &'static str| move |e: rustix::io::Errno| format!("{what}: {e}");
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(io("opening a pseudo-terminal"))?;
    grantpt(&master).map_err(io("grantpt"))?;
    unlockpt(&master).map_err(io("unlockpt"))?;
    let name = ptsname(&master, Vec::new()).map_err(io("ptsname"))?;
    let slave_path = name.to_string_lossy().into_owned();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .map_err(|e| format!("opening {slave_path}: {e}"))?;
    let dup = |f: &std::fs::File| f.try_clone().map_err(|e| format!("{slave_path}: {e}"));
    let mut command = if Path::new(SETSID).exists() {
        let mut c = tokio::process::Command::new(SETSID);
        c.arg("--ctty").arg(program).args(args);
        c
    } else {
        let mut c = tokio::process::Command::new(program);
        c.args(args);
        c
    };
    let mut env: Vec<(String, String)> = env.to_vec();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    command
        .current_dir(working_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {program:?}: {e}"))?;
    drop(command);
    let master = std::fs::File::from(master);
    let resize_fd = master
        .try_clone()
        .map_err(|e| format!("pseudo-terminal: {e}"))?;
    let mut writer = tokio::fs::File::from_std(
        master
            .try_clone()
            .map_err(|e| format!("pseudo-terminal: {e}"))?,
    );
    let reader = tokio::fs::File::from_std(master);
    let (ours, theirs) = channel::duplex(16);
    let Duplex { tx, mut rx } = theirs;
    let stdin = options.stdin;
    let (hangup, hung_up) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _hangup = hangup;
        while let Some(f) = rx.recv().await {
            match f.channel {
                STDIN if stdin => {
                    let written = writer.write_all(&f.data).await;
                    if written.is_err() || writer.flush().await.is_err() {
                        return;
                    }
                }
                RESIZE => {
                    if let Ok(size) = serde_json::from_slice::<TerminalSize>(&f.data) {
                        let _ = rustix::termios::tcsetwinsize(
                            &resize_fd,
                            rustix::termios::Winsize {
                                ws_row: size.height,
                                ws_col: size.width,
                                ws_xpixel: 0,
                                ws_ypixel: 0,
                            },
                        );
                    }
                }
                // End of input on a terminal: the end-of-file character.
                CLOSE if f.data.first() == Some(&STDIN) => {
                    let _ = writer.write_all(&[4]).await;
                    let _ = writer.flush().await;
                }
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        // The terminal's output ends (EIO) once the command and its children closed it.
        let output = tokio::spawn(pump(reader, STDOUT, tx.clone()));
        // The client gone, the terminal hangs up: the command is killed.
        let status = tokio::select! {
            s = child.wait() => s,
            _ = tx.closed() => return,
            _ = hung_up => {
                output.abort();
                return;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), output).await;
        let _ = tx.send(outcome(status)).await;
    });
    Ok(ours)
}
