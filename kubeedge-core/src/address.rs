//! Where edges reach a cloud, typed: cloudhub (the `wss://` sync channel) and its certificate
//! server (the `https://` CA and node certificate signing), instead of URLs formatted by hand.
//!
//! ```
//! use kubeedge_core::address::{CloudAddress, HostPort};
//!
//! // Upstream's ports: cloudhub 10000, its certificate server 10002.
//! let cloud = CloudAddress::with_default_ports("cloud.example")?;
//! assert_eq!(cloud.hub_url(), "wss://cloud.example:10000");
//! assert_eq!(cloud.https_url(), "https://cloud.example:10002");
//!
//! // As flags and configuration files give them: with or without a scheme, IPv6 in brackets.
//! let hub: HostPort = "wss://[2001:db8::1]:30000".parse()?;
//! assert_eq!((hub.host(), hub.port()), ("2001:db8::1", 30000));
//! let cloud = CloudAddress::new(hub, "[2001:db8::1]:30002".parse()?);
//! assert_eq!(cloud.https_url(), "https://[2001:db8::1]:30002");
//! # Ok::<(), kubeedge_core::address::AddressError>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// cloudhub's port upstream (`modules.cloudHub.websocket.port`).
pub const DEFAULT_HUB_PORT: u16 = 10000;
/// cloudhub's certificate server's port upstream (`modules.cloudHub.https.port`).
pub const DEFAULT_HTTPS_PORT: u16 = 10002;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No host before the port.
    #[error("{0:?}: no host")]
    NoHost(String),
    /// No `:PORT`, or a port that is not 1–65535.
    #[error("{0:?}: expected HOST:PORT with a port from 1 to 65535")]
    Port(String),
    /// A scheme other than the one expected, or a path after the port.
    #[error("{input:?}: expected {expected}HOST:PORT")]
    Form {
        /// What was given.
        input: String,
        /// The scheme expected (`wss://`, `https://`, or empty).
        expected: &'static str,
    },
    /// A host name with characters no DNS name or IP address has.
    #[error("{0:?}: not a DNS name or IP address")]
    Host(String),
}

/// A host (DNS name or IP address) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// `host` (a DNS name or an IP address; IPv6 without brackets) and `port` (not 0).
    pub fn new(host: impl Into<String>, port: u16) -> Result<HostPort, AddressError> {
        let host = host.into();
        let shown = || format!("{host}:{port}");
        if host.is_empty() {
            return Err(AddressError::NoHost(shown()));
        }
        if port == 0 {
            return Err(AddressError::Port(shown()));
        }
        let dns = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !dns && host.parse::<IpAddr>().is_err() {
            return Err(AddressError::Host(host));
        }
        Ok(HostPort { host, port })
    }

    /// The host, as given (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses `HOST:PORT` with an optional `scheme` (`wss://`, `https://`) before it.
    fn parse_with(s: &str, scheme: &'static str) -> Result<HostPort, AddressError> {
        let form = || AddressError::Form {
            input: s.to_owned(),
            expected: scheme,
        };
        let rest = match s.split_once("://") {
            Some((given, rest)) if !scheme.is_empty() && scheme.starts_with(given) => rest,
            Some(_) => return Err(form()),
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(form)?;
            (
                host,
                after
                    .strip_prefix(':')
                    .ok_or(AddressError::Port(s.to_owned()))?,
            )
        } else {
            rest.rsplit_once(':')
                .ok_or(AddressError::Port(s.to_owned()))?
        };
        if port.contains('/') || host.contains('/') {
            return Err(form());
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| AddressError::Port(s.to_owned()))?;
        HostPort::new(host, port)
    }
}

impl FromStr for HostPort {
    type Err = AddressError;

    /// `HOST:PORT`, `[IPV6]:PORT`, or either after `wss://` or `https://`.
    fn from_str(s: &str) -> Result<HostPort, AddressError> {
        match s.split_once("://") {
            Some(("wss", _)) => HostPort::parse_with(s, "wss://"),
            Some(("https", _)) => HostPort::parse_with(s, "https://"),
            Some(_) => Err(AddressError::Form {
                input: s.to_owned(),
                expected: "",
            }),
            None => HostPort::parse_with(s, ""),
        }
    }
}

impl fmt::Display for HostPort {
    /// `host:port`, `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for HostPort {
    /// The address as a client dials it: a wildcard (`0.0.0.0`, `::`), which a server listens on
    /// but no client can dial, becomes loopback. Port 0 is kept (an address not bound yet).
    fn from(addr: SocketAddr) -> HostPort {
        let ip = if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        };
        HostPort {
            host: ip.to_string(),
            port: addr.port(),
        }
    }
}

/// Where edges reach a cloud: cloudhub and its certificate server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloudAddress {
    hub: HostPort,
    https: HostPort,
}

impl CloudAddress {
    /// cloudhub at `hub`, its certificate server at `https`.
    pub fn new(hub: HostPort, https: HostPort) -> CloudAddress {
        CloudAddress { hub, https }
    }

    /// Both on `host` at upstream's ports (10000 and 10002).
    pub fn with_default_ports(host: impl Into<String>) -> Result<CloudAddress, AddressError> {
        let host = host.into();
        Ok(CloudAddress {
            hub: HostPort::new(host.clone(), DEFAULT_HUB_PORT)?,
            https: HostPort::new(host, DEFAULT_HTTPS_PORT)?,
        })
    }

    /// From the two URLs as edgecore's flags and `edgecore.yaml` give them (`wss://HOST:PORT`,
    /// `https://HOST:PORT`; the schemes may be left out).
    pub fn from_urls(hub: &str, https: &str) -> Result<CloudAddress, AddressError> {
        Ok(CloudAddress {
            hub: HostPort::parse_with(hub, "wss://")?,
            https: HostPort::parse_with(https, "https://")?,
        })
    }

    /// cloudhub.
    pub fn hub(&self) -> &HostPort {
        &self.hub
    }

    /// The certificate server.
    pub fn https(&self) -> &HostPort {
        &self.https
    }

    /// `wss://host:port`, cloudhub's URL.
    pub fn hub_url(&self) -> String {
        format!("wss://{}", self.hub)
    }

    /// `https://host:port`, the certificate server's URL.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https)
    }
}

impl fmt::Display for CloudAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (certificates: {})", self.hub_url(), self.https_url())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (input, host, port) in [
            ("cloud.example:10000", "cloud.example", 10000),
            ("wss://10.0.0.1:10000", "10.0.0.1", 10000),
            ("https://10.0.0.1:10002/", "10.0.0.1", 10002),
            ("[::1]:7", "::1", 7),
        ] {
            let hp: HostPort = input.parse().unwrap();
            assert_eq!((hp.host(), hp.port()), (host, port), "{input}");
        }
        assert_eq!(
            "[::1]:7".parse::<HostPort>().unwrap().to_string(),
            "[::1]:7"
        );
        let from: HostPort = SocketAddr::from(([0, 0, 0, 0], 9)).into();
        assert_eq!(from.to_string(), "127.0.0.1:9");
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "cloud.example",
            "cloud.example:0",
            "cloud.example:70000",
            ":10000",
            "http://cloud.example:1",
            "wss://cloud.example:1/path",
            "clo ud:1",
            "[::1:7",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
        assert!(CloudAddress::from_urls("https://a:1", "https://a:2").is_err());
        let cloud = CloudAddress::from_urls("a:1", "a:2").unwrap();
        assert_eq!(cloud.hub_url(), "wss://a:1");
        assert_eq!(cloud.https_url(), "https://a:2");
    }
}
