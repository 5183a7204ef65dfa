//! The stream tunnel between an edge and the cloud: the edge dials out (TLS with its node
//! certificate) and upgrades an HTTP/1.1 request on cloudhub's HTTPS port (`GET`
//! [`TUNNEL_PATH`], `Upgrade:` [`TUNNEL_UPGRADE`]); the connection then runs HTTP/2 with the
//! **cloud as client and the edge as server**, so the cloud opens one HTTP/2 stream per pod
//! stream, with HTTP/2's per-stream and per-connection flow control (one busy stream does not
//! stall the others, and the tunnel is apart from the sync channel).
//!
//! The edge serves kubelet-like paths on it:
//!
//! | request | body both ways |
//! | --- | --- |
//! | `GET /containerLogs/{ns}/{pod}/{container}?follow=&previous=&tailLines=&sinceSeconds=&timestamps=&limitBytes=` | log bytes (response) |
//! | `POST /exec/{ns}/{pod}/{container}?command=...&stdin=&stdout=&stderr=&tty=` | channel [`Frame`]s |
//! | `POST /attach/{ns}/{pod}/{container}?stdin=&stdout=&stderr=&tty=` | channel [`Frame`]s |
//! | `POST /portForward/{ns}/{pod}?port=P` | the connection's bytes |
//! | `GET /stats/summary` | the kubelet's summary JSON |
//!
//! A refusal is an HTTP status with a `v1.Status` JSON body.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{Decoder, Frame};

/// The path of the tunnel's upgrade request on cloudhub's HTTPS port.
pub const TUNNEL_PATH: &str = "/v1/tunnel";
/// The `Upgrade` protocol of the tunnel.
pub const TUNNEL_UPGRADE: &str = "kubeedge-tunnel/1";
/// HTTP/2 window of each stream.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 window of the whole tunnel.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Sends `data` on an HTTP/2 stream, waiting for window as needed.
pub async fn send(stream: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await;
        let n = match granted {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        stream.send_data(chunk, false)?;
    }
    Ok(())
}

/// The next bytes of an HTTP/2 body; the window they used is given back at once (the caller
/// asks for more only when it passed these on, which bounds what is buffered).
pub async fn recv(body: &mut h2::RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let data = body.data().await?;
    if let Ok(d) = &data {
        let _ = body.flow_control().release_capacity(d.len());
    }
    Some(data)
}

/// Sends frames from `rx` as a body, ending the stream when `rx` ends.
pub async fn frames_out(mut rx: mpsc::Receiver<Frame>, mut stream: h2::SendStream<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send(&mut stream, frame.encode()).await.is_err() {
            return;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// Decodes a body's frames into `tx`, until the body or `tx` ends (a malformed body ends it).
pub async fn frames_in(mut body: h2::RecvStream, tx: mpsc::Sender<Frame>) {
    let mut decoder = Decoder::default();
    while let Some(Ok(bytes)) = recv(&mut body).await {
        decoder.push(&bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel: dropping a malformed stream");
                    return;
                }
            }
        }
    }
}

/// Copies `reader` into an HTTP/2 body, ending it at EOF.
pub async fn copy_out<R: AsyncRead + Unpin>(mut reader: R, mut stream: h2::SendStream<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if send(&mut stream, Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// Copies an HTTP/2 body into `writer`, shutting its write side at the end.
pub async fn copy_in<W: AsyncWrite + Unpin>(mut body: h2::RecvStream, mut writer: W) {
    while let Some(Ok(bytes)) = recv(&mut body).await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Reads an HTTP/1.1 response head (through the blank line) byte by byte, so that nothing after
/// it is consumed; at most 16 KiB, within 10 s.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("the response head is too long".into());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), r.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            Ok(Ok(_)) => return Err("the connection closed during the upgrade".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer to the upgrade within 10 s".into()),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
