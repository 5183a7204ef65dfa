//! SPDY/3.1 framing, as kubectl (`exec`, `attach`, `port-forward`), the Kubernetes API server and
//! CRI streaming servers (containerd's) speak it over an upgraded HTTP/1.1 connection: streams
//! opened with a header block (zlib with SPDY's preset dictionary, one compression context per
//! direction), data frames with a FIN flag, resets, pings and GOAWAY.
//!
//! Either side may open streams ([`Connection::open`]); streams the peer opens arrive on the
//! receiver [`Connection::start`] returns and are answered (SYN_REPLY) at once, as the kubelet
//! does. Flow control windows are not enforced (neither does Go's spdystream, kubectl's side);
//! backpressure comes from TCP: a stream whose reader falls behind holds the connection's reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A header block: names (lower case on the wire) and values.
pub type Headers = Vec<(String, String)>;

/// Largest frame accepted (the protocol allows 16 MiB; kubectl and Go's streaming servers write
/// data in 32 KiB pieces).
pub const MAX_FRAME: usize = 1 << 20;
/// Most header pairs in a block (values split at NULs counted apart).
const MAX_HEADERS: usize = 1000;
/// Most bytes a decoded header block may make (names counted once per value).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// Most streams open at once on a connection; more are refused.
const MAX_STREAMS: usize = 1000;
/// Largest data frame written.
const DATA_CHUNK: usize = 32 * 1024;
/// How long [`Connection::open`] waits for the peer's SYN_REPLY.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpdyError {
    /// The connection is gone.
    #[error("the SPDY connection is closed")]
    Closed,
    /// The peer broke the protocol.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// The peer reset a stream we opened.
    #[error("the peer reset the stream (status {0})")]
    Reset(u32),
    /// The peer did not answer a stream in time.
    #[error("no reply to a new stream within {0:?}")]
    Timeout(Duration),
    /// Reading or writing the connection failed.
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Which end of the connection this is (it picks stream ids: clients odd, servers even).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the upgrade request.
    Client,
    /// The side that answered it.
    Server,
}

enum Out {
    Syn { id: u32, headers: Headers },
    Reply { id: u32 },
    Data { id: u32, data: Bytes, fin: bool },
    Rst { id: u32, status: u32 },
    Ping(u32),
    GoAway,
}

type Replies = HashMap<u32, oneshot::Sender<Result<(), SpdyError>>>;

struct Shared {
    out: mpsc::Sender<Out>,
    streams: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
    replies: Mutex<Replies>,
    next_id: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A SPDY connection. Cheap to clone; the connection lives while its peer keeps it open or until
/// [`Connection::shutdown`].
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("spdy::Connection").finish_non_exhaustive()
    }
}

/// One stream: the header block it was opened with, the peer's data, and a writer.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    headers: Headers,
    data: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A header of the block the stream was opened with (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The peer's next data; `None` once the peer finished (FIN) or reset the stream.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }

    /// A handle that writes to the stream.
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// The receiving half alone.
    pub fn into_receiver(self) -> mpsc::Receiver<Bytes> {
        self.data
    }
}

/// Writes to one stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn send(&self, mut data: Bytes) -> Result<(), SpdyError> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(DATA_CHUNK));
            self.out
                .send(Out::Data {
                    id: self.id,
                    data: chunk,
                    fin: false,
                })
                .await
                .map_err(|_| SpdyError::Closed)?;
        }
        Ok(())
    }

    /// Ends our side of the stream (an empty data frame with FIN).
    pub async fn finish(&self) -> Result<(), SpdyError> {
        self.out
            .send(Out::Data {
                id: self.id,
                data: Bytes::new(),
                fin: true,
            })
            .await
            .map_err(|_| SpdyError::Closed)
    }

    /// Resets the stream (status CANCEL).
    pub async fn reset(&self) {
        let _ = self
            .out
            .send(Out::Rst {
                id: self.id,
                status: 5,
            })
            .await;
    }
}

impl Connection {
    /// Runs SPDY over `io` as `role`; streams the peer opens arrive on the receiver.
    pub fn start<IO>(io: IO, role: Role) -> (Connection, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            out,
            streams: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(match role {
                Role::Client => 1,
                Role::Server => 2,
            }),
        });
        tokio::spawn(write_loop(write, out_rx, Arc::downgrade(&shared)));
        let reader = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = read_loop(read, &reader, incoming_tx).await {
                tracing::debug!(error = %e, "spdy: connection ended");
            }
            lock(&reader.streams).clear();
            for (_, waiter) in lock(&reader.replies).drain() {
                let _ = waiter.send(Err(SpdyError::Closed));
            }
        });
        (Connection { shared }, incoming)
    }

    /// Opens a stream with `headers` and waits for the peer's reply.
    pub async fn open(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let id = self.shared.next_id.fetch_add(2, Ordering::SeqCst);
        let (data_tx, data) = mpsc::channel(32);
        let (reply_tx, reply) = oneshot::channel();
        lock(&self.shared.streams).insert(id, data_tx);
        lock(&self.shared.replies).insert(id, reply_tx);
        self.shared
            .out
            .send(Out::Syn {
                id,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| SpdyError::Closed)?;
        match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
            Ok(Ok(Ok(()))) => Ok(Stream {
                id,
                headers,
                data,
                writer: StreamWriter {
                    id,
                    out: self.shared.out.clone(),
                },
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(SpdyError::Closed),
            Err(_) => {
                lock(&self.shared.replies).remove(&id);
                lock(&self.shared.streams).remove(&id);
                Err(SpdyError::Timeout(REPLY_TIMEOUT))
            }
        }
    }

    /// Says GOAWAY and closes our side of the connection once what is queued is written.
    pub async fn shutdown(&self) {
        let _ = self.shared.out.send(Out::GoAway).await;
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    shared: &Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
) -> Result<(), SpdyError> {
    let mut inflater = Inflater::new();
    let mut head = [0u8; 8];
    loop {
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            let id = be32(&head) & 0x7fff_ffff;
            let tx = lock(&shared.streams).get(&id).cloned();
            if let Some(tx) = tx
                && !body.is_empty()
            {
                // A stream nobody reads any more drops its data.
                let _ = tx.send(Bytes::from(body)).await;
            }
            if flags & 1 != 0 {
                lock(&shared.streams).remove(&id);
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(SpdyError::Protocol(format!("version {version}, not 3")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let short = |n: usize| {
            if body.len() < n {
                Err(SpdyError::Protocol(format!(
                    "control frame {kind} too short"
                )))
            } else {
                Ok(())
            }
        };
        match kind {
            // SYN_STREAM
            1 => {
                short(10)?;
                let id = be32(&body) & 0x7fff_ffff;
                let headers = inflater.headers(&body[10..])?;
                let (data_tx, data) = mpsc::channel(32);
                if lock(&shared.streams).len() >= MAX_STREAMS {
                    let _ = shared.out.send(Out::Rst { id, status: 3 }).await;
                    continue;
                }
                if flags & 1 == 0 {
                    lock(&shared.streams).insert(id, data_tx);
                }
                shared
                    .out
                    .send(Out::Reply { id })
                    .await
                    .map_err(|_| SpdyError::Closed)?;
                let stream = Stream {
                    id,
                    headers,
                    data,
                    writer: StreamWriter {
                        id,
                        out: shared.out.clone(),
                    },
                };
                if incoming.send(stream).await.is_err() {
                    let _ = shared.out.send(Out::Rst { id, status: 3 }).await;
                }
            }
            // SYN_REPLY
            2 => {
                short(4)?;
                let id = be32(&body) & 0x7fff_ffff;
                inflater.headers(&body[4..])?;
                if let Some(w) = lock(&shared.replies).remove(&id) {
                    let _ = w.send(Ok(()));
                }
                if flags & 1 != 0 {
                    lock(&shared.streams).remove(&id);
                }
            }
            // RST_STREAM
            3 => {
                short(8)?;
                let id = be32(&body) & 0x7fff_ffff;
                lock(&shared.streams).remove(&id);
                if let Some(w) = lock(&shared.replies).remove(&id) {
                    let _ = w.send(Err(SpdyError::Reset(be32(&body[4..]))));
                }
            }
            // PING: answer the peer's.
            6 => {
                short(4)?;
                let _ = shared.out.send(Out::Ping(be32(&body))).await;
            }
            // GOAWAY
            7 => return Ok(()),
            // HEADERS: decompressed to keep the context in step, otherwise unused.
            8 => {
                short(4)?;
                inflater.headers(&body[4..])?;
            }
            // SETTINGS, WINDOW_UPDATE and the rest.
            _ => {}
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    shared: std::sync::Weak<Shared>,
) {
    let mut deflater = Deflater::new();
    while let Some(out) = rx.recv().await {
        let (frame, last) = match out {
            Out::Syn { id, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                body.extend(deflater.block(&headers));
                (control(1, 0, &body), false)
            }
            Out::Reply { id } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend(deflater.block(&[]));
                (control(2, 0, &body), false)
            }
            Out::Data { id, data, fin } => {
                let mut f = Vec::with_capacity(8 + data.len());
                f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                f.push(u8::from(fin));
                f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                f.extend_from_slice(&data);
                (f, false)
            }
            Out::Rst { id, status } => {
                if let Some(shared) = shared.upgrade() {
                    lock(&shared.streams).remove(&id);
                }
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                (control(3, 0, &body), false)
            }
            Out::Ping(id) => (control(6, 0, &id.to_be_bytes()), false),
            Out::GoAway => (control(7, 0, &[0; 8]), true),
        };
        if w.write_all(&frame).await.is_err() {
            return;
        }
        if (last || rx.is_empty()) && w.flush().await.is_err() {
            return;
        }
        if last {
            break;
        }
    }
    let _ = w.shutdown().await;
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&[0x80, 3]);
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// Compresses header blocks: one zlib stream per direction, flushed per block.
struct Deflater(Compress);

impl Deflater {
    fn new() -> Deflater {
        let mut c = Compress::new(Compression::default(), true);
        // Setting the dictionary of a new stream cannot fail.
        let _ = c.set_dictionary(&dictionary());
        Deflater(c)
    }

    fn block(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut at = 0;
        loop {
            let before = self.0.total_in();
            if self
                .0
                .compress_vec(&raw[at..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            at += (self.0.total_in() - before) as usize;
            if at >= raw.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
        }
        out
    }
}

/// Decompresses the peer's header blocks.
struct Inflater(Decompress);

impl Inflater {
    fn new() -> Inflater {
        Inflater(Decompress::new(true))
    }

    fn headers(&mut self, input: &[u8]) -> Result<Headers, SpdyError> {
        let bad = |what: String| SpdyError::Protocol(format!("header block: {what}"));
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut at = 0;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let before = self.0.total_in();
            match self
                .0
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&dictionary())
                        .map_err(|e| bad(e.to_string()))?;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
            at += (self.0.total_in() - before) as usize;
            if at >= input.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() > 1 << 20 || rounds > 10_000 {
                return Err(bad("too large".into()));
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
        }
        parse_block(&out).ok_or_else(|| bad("malformed".into()))
    }
}

/// Decodes one SPDY/3 header block as the first of a connection (zlib with SPDY's dictionary,
/// then the name/value pairs). Malformed or oversized blocks (over 1 MiB inflated, 1,000 pairs)
/// are errors.
pub fn decode_header_block(block: &[u8]) -> Result<Headers, SpdyError> {
    Inflater::new().headers(block)
}

/// Encodes a header block as the first of a connection (see [`decode_header_block`]).
pub fn encode_header_block(headers: &[(String, String)]) -> Vec<u8> {
    Deflater::new().block(headers)
}

fn parse_block(b: &[u8]) -> Option<Headers> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let count = be32(take(4)?) as usize;
    if count > MAX_HEADERS {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    // Values split at NULs repeat their name: what that makes is bounded too.
    let mut budget = MAX_HEADER_BYTES;
    for _ in 0..count {
        let n = be32(take(4)?) as usize;
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = be32(take(4)?) as usize;
        let value = take(n)?;
        for v in value.split(|c| *c == 0) {
            budget = budget.checked_sub(name.len() + v.len())?;
            if headers.len() >= MAX_HEADERS {
                return None;
            }
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Some(headers)
}

/// SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): common
/// header names, each with a 32-bit length, then a run of common values.
fn dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::with_capacity(1424);
    for n in NAMES {
        d.extend_from_slice(&(n.len() as u32).to_be_bytes());
        d.extend_from_slice(n.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_has_the_specified_length() {
        // 175 rows of 8 bytes in the draft's table, the last one 7 long.
        assert_eq!(dictionary().len(), 1423);
    }

    #[test]
    fn header_blocks_round_trip_across_several_blocks() {
        let mut d = Deflater::new();
        let mut i = Inflater::new();
        for n in 0..3 {
            let h: Headers = vec![
                ("streamType".into(), "stdout".into()),
                ("port".into(), format!("80{n}")),
            ];
            let got = i.headers(&d.block(&h)).unwrap();
            assert_eq!(got[0], ("streamtype".to_owned(), "stdout".to_owned()));
            assert_eq!(got[1].1, format!("80{n}"));
        }
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_end_with_fin() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (client, _none) = Connection::start(a, Role::Client);
        let (_server, mut incoming) = Connection::start(b, Role::Server);
        let opener = tokio::spawn(async move {
            let mut s = client
                .open(vec![("streamType".into(), "stdin".into())])
                .await
                .unwrap();
            s.writer()
                .send(Bytes::from(vec![7u8; 100_000]))
                .await
                .unwrap();
            s.writer().finish().await.unwrap();
            s.recv().await
        });
        let mut s = incoming.recv().await.unwrap();
        assert_eq!(s.header("streamtype"), Some("stdin"));
        let mut got = 0;
        while let Some(d) = s.recv().await {
            got += d.len();
        }
        assert_eq!(got, 100_000);
        s.writer().send(Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(opener.await.unwrap().as_deref(), Some(&b"ok"[..]));
    }
}
