//! Channel frames: one pod stream's traffic as numbered channels, as Kubernetes' remote command
//! protocols number them (`0` stdin, `1` stdout, `2` stderr, `3` error, `4` resize, and v5's
//! `255` close), and their encoding inside the edge–cloud tunnel.
//!
//! In the tunnel a frame is `[channel: u8][length: u32 big-endian][data]`, so that a stream's
//! bytes may be cut anywhere by the transport.

use bytes::{Buf, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Standard input (client → pod).
pub const STDIN: u8 = 0;
/// Standard output (pod → client).
pub const STDOUT: u8 = 1;
/// Standard error (pod → client).
pub const STDERR: u8 = 2;
/// The outcome: a `v1.Status` JSON (pod → client), sent once at the end.
pub const ERROR: u8 = 3;
/// Terminal size changes: `{"Width":W,"Height":H}` (client → pod).
pub const RESIZE: u8 = 4;
/// Protocol v5's close signal: the data is the channel that is closed (client → pod: end of stdin).
pub const CLOSE: u8 = 255;

/// Largest frame accepted from the tunnel.
pub const MAX_FRAME: usize = 1 << 20;

/// One piece of a pod stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The channel (see the constants).
    pub channel: u8,
    /// Its bytes.
    pub data: Bytes,
}

impl Frame {
    /// A frame on `channel`.
    pub fn new(channel: u8, data: impl Into<Bytes>) -> Frame {
        Frame {
            channel,
            data: data.into(),
        }
    }

    /// The close signal for `channel`.
    pub fn close(channel: u8) -> Frame {
        Frame::new(CLOSE, vec![channel])
    }

    /// The tunnel encoding.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + self.data.len());
        out.extend_from_slice(&[self.channel]);
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
        out.freeze()
    }
}

/// A frame in the tunnel is larger than [`MAX_FRAME`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a stream frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
pub struct FrameTooLarge(pub usize);

/// Reassembles frames from the tunnel's bytes.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Adds bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameTooLarge> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let channel = self.buf[0];
        self.buf.advance(5);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Frame { channel, data }))
    }

    /// Whether bytes of an unfinished frame are held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// One end of a pod stream: frames to send, frames received. Dropping `tx` ends what this end
/// sends; `rx` ends when the other end is done.
#[derive(Debug)]
pub struct Duplex {
    /// Frames to the other end.
    pub tx: mpsc::Sender<Frame>,
    /// Frames from the other end.
    pub rx: mpsc::Receiver<Frame>,
}

/// Two connected ends, each holding up to `capacity` frames in flight.
pub fn duplex(capacity: usize) -> (Duplex, Duplex) {
    let (a_tx, b_rx) = mpsc::channel(capacity);
    let (b_tx, a_rx) = mpsc::channel(capacity);
    (Duplex { tx: a_tx, rx: a_rx }, Duplex { tx: b_tx, rx: b_rx })
}

/// The `v1.Status` a finished command reports on [`ERROR`]: `Success` for exit code 0, else a
/// `NonZeroExitCode` failure carrying the code, as the kubelet reports it (kubectl exits with it).
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: exit status {code}"),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// A failure `v1.Status` with `message` (the stream could not be run).
pub fn failure_status(message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": "InternalError", "code": 500})
}

/// The exit code a [`exit_status`] carries (`Some(0)` for success, `None` for other failures).
pub fn exit_code(status: &Value) -> Option<i32> {
    if status["status"] == "Success" {
        return Some(0);
    }
    status["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")?["message"]
        .as_str()?
        .parse()
        .ok()
}

/// A terminal size, as the resize channel carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Splits concatenated JSON terminal sizes (as a SPDY resize stream carries them); `rest` keeps
/// an unfinished one.
pub fn terminal_sizes(rest: &mut Vec<u8>, bytes: &[u8]) -> Vec<TerminalSize> {
    rest.extend_from_slice(bytes);
    let mut out = Vec::new();
    let mut consumed = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<TerminalSize>();
        while let Some(Ok(size)) = it.next() {
            out.push(size);
            consumed = it.byte_offset();
        }
    }
    rest.drain(..consumed);
    // Garbage that never parses is dropped rather than held forever.
    if rest.len() > 4096 {
        rest.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_cut() {
        let frames = [
            Frame::new(STDOUT, &b"hello"[..]),
            Frame::new(STDERR, Bytes::new()),
            Frame::close(STDIN),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        for cut in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            d.push(&wire[..cut]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            d.push(&wire[cut..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, frames);
            assert!(d.is_empty());
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut d = Decoder::default();
        d.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(FrameTooLarge(u32::MAX as usize)));
    }

    #[test]
    fn exit_codes_round_trip() {
        assert_eq!(exit_code(&exit_status(0)), Some(0));
        assert_eq!(exit_code(&exit_status(7)), Some(7));
        assert_eq!(exit_code(&failure_status("no")), None);
    }

    #[test]
    fn resize_objects_split_across_reads() {
        let mut rest = Vec::new();
        let a = terminal_sizes(&mut rest, br#"{"Width":80,"Height":24}{"Width":1"#);
        assert_eq!(
            a,
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        let b = terminal_sizes(&mut rest, br#"00,"Height":40}"#);
        assert_eq!(
            b,
            [TerminalSize {
                width: 100,
                height: 40
            }]
        );
        assert!(rest.is_empty());
    }
}
