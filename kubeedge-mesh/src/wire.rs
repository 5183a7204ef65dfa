//! What travels on the tunnel's streams: a one-byte stream kind, then varint-length-delimited
//! protobuf messages (upstream EdgeMesh's `proxy.Proxy` for proxied connections; [`Hop`] for the
//! relay), then, for proxied and relayed streams, raw bytes.
//!
//! Every message is at most [`MAX_MESSAGE`] bytes (upstream's limit); a longer length, a bad
//! varint or an unknown kind is refused before anything is allocated for it.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest message on a stream (upstream EdgeMesh's 4096 bytes).
pub const MAX_MESSAGE: usize = 4096;

/// The first byte of every stream: what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A connection to a backend on the stream's far node ([`Proxy`] request and answer, then
    /// the connection's bytes).
    Proxy = 1,
    /// To a relay: connect me to the node in the [`Hop`]. From a relay: the node in the [`Hop`]
    /// is connecting to you. Then the two nodes' own TLS session.
    Circuit = 2,
    /// To a relay: the addresses the node in the [`Hop`] announced, for a direct connection.
    Whois = 3,
    /// To a relay: the addresses this node listens on ([`Hop::addrs`]).
    Announce = 4,
    /// Hole punching. To a relay: have the node in the [`Hop`] dial me while I dial it, and tell
    /// me its address. From a relay: the node in the [`Hop`] (at the address given) is dialling
    /// you; dial it back.
    Punch = 5,
}

impl Kind {
    /// The kind for a stream's first byte.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Proxy,
            2 => Kind::Circuit,
            3 => Kind::Whois,
            4 => Kind::Announce,
            5 => Kind::Punch,
            _ => return None,
        })
    }
}

/// The answer codes of upstream's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Type {
    /// A request.
    Connect = 0,
    /// Done: the stream now carries the connection's bytes.
    Success = 1,
    /// Refused; the stream ends.
    Failed = 2,
}

/// Upstream EdgeMesh's `proxy.Proxy` (tags and types as upstream's proto2 file).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Proxy {
    /// Request or answer.
    #[prost(enumeration = "Type", tag = "1")]
    pub r#type: i32,
    /// `tcp` or `udp`.
    #[prost(string, tag = "2")]
    pub protocol: String,
    /// The node the backend is on.
    #[prost(string, tag = "3")]
    pub node_name: String,
    /// The backend's address.
    #[prost(string, tag = "4")]
    pub ip: String,
    /// The backend's port.
    #[prost(int32, tag = "5")]
    pub port: i32,
}

/// A relay request or answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hop {
    /// Request or answer.
    #[prost(enumeration = "Type", tag = "1")]
    pub r#type: i32,
    /// The other node (the target of a circuit or whois; the source of an incoming circuit).
    #[prost(string, tag = "2")]
    pub node_name: String,
    /// Addresses (`ip:port`) for a direct connection.
    #[prost(string, repeated, tag = "3")]
    pub addrs: Vec<String>,
    /// Why a request failed.
    #[prost(string, tag = "4")]
    pub reason: String,
}

/// A malformed or refused stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream ended or failed.
    #[error("tunnel stream: {0}")]
    Io(#[from] std::io::Error),
    /// A length over [`MAX_MESSAGE`] or a bad varint.
    #[error("tunnel stream: bad message length")]
    Length,
    /// Bytes that are not the expected message.
    #[error("tunnel stream: undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A first byte that names no stream kind.
    #[error("tunnel stream: unknown stream kind {0}")]
    Kind(u8),
}

/// Reads a stream's kind byte.
pub async fn read_kind<R: AsyncRead + Unpin>(r: &mut R) -> Result<Kind, WireError> {
    let b = r.read_u8().await?;
    Kind::from_byte(b).ok_or(WireError::Kind(b))
}

/// Reads one length-delimited message.
pub async fn read_msg<M: Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<M, WireError> {
    let mut len: u64 = 0;
    for shift in (0..).step_by(7).take(3) {
        let b = r.read_u8().await?;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let len = usize::try_from(len).map_err(|_| WireError::Length)?;
            if len > MAX_MESSAGE {
                return Err(WireError::Length);
            }
            let mut buf = vec![0; len];
            r.read_exact(&mut buf).await?;
            return Ok(M::decode(&buf[..])?);
        }
    }
    Err(WireError::Length)
}

/// Writes one length-delimited message (with `kind` first when given) and flushes.
pub async fn write_msg<M: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Option<Kind>,
    msg: &M,
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(msg.encoded_len() + 4);
    if let Some(k) = kind {
        buf.push(k as u8);
    }
    msg.encode_length_delimited(&mut buf)
        .map_err(|_| WireError::Length)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one UDP datagram framed on a stream (a big-endian u16 length, then the bytes).
pub async fn read_datagram<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), std::io::Error> {
    let len = usize::from(r.read_u16().await?);
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// Writes one UDP datagram framed for a stream.
pub async fn write_datagram<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
) -> Result<(), std::io::Error> {
    let len = u16::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "datagram too big"))?;
    let mut buf = Vec::with_capacity(data.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_lengths_are_refused() {
        let msg = Proxy {
            r#type: Type::Connect as i32,
            protocol: "tcp".into(),
            node_name: "a".into(),
            ip: "10.0.0.1".into(),
            port: 8080,
        };
        let mut buf = Vec::new();
        write_msg(&mut buf, Some(Kind::Proxy), &msg).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(read_kind(&mut r).await.unwrap(), Kind::Proxy);
        assert_eq!(read_msg::<Proxy, _>(&mut r).await.unwrap(), msg);

        // 5000 bytes announced: refused before reading them.
        let mut r = &[0x88, 0x27, 0, 0][..];
        assert!(matches!(
            read_msg::<Proxy, _>(&mut r).await,
            Err(WireError::Length)
        ));
        // A varint that never ends.
        let mut r = &[0xff, 0xff, 0xff, 0xff][..];
        assert!(matches!(
            read_msg::<Proxy, _>(&mut r).await,
            Err(WireError::Length)
        ));
        // Garbage of the right length.
        let mut r = &[3, 0xff, 0xff, 0xff][..];
        assert!(matches!(
            read_msg::<Proxy, _>(&mut r).await,
            Err(WireError::Decode(_))
        ));
        let mut r = &[9u8][..];
        assert!(matches!(read_kind(&mut r).await, Err(WireError::Kind(9))));
    }
}
