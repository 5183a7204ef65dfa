//! Traffic capture as upstream EdgeMesh (and kube-proxy's userspace mode) does it: an iptables
//! chain in the `nat` table, jumped to from `OUTPUT` (this host's processes, host-network pods)
//! and `PREROUTING` (pods behind a bridge), with one `REDIRECT` per ClusterIP port to the proxy's
//! listener for it; and the DNS address on a dummy interface.
//!
//! The rules are replaced as a whole with `iptables-restore --noflush` (one atomic table commit)
//! each time the set of Service ports changes; [`Capture::remove`] (also on drop) takes the jumps
//! and the chain away. IPv4 only: ClusterIPs of other families are not redirected.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::table::{Frontend, Protocol};

/// The chain's name.
pub const CHAIN: &str = "KUBEEDGE-MESH";

/// Upstream EdgeMesh's interface for its DNS address.
pub const DUMMY: &str = "edgemesh0";

/// The iptables rules of one agent.
#[derive(Debug)]
pub struct Capture {
    chain: String,
    installed: bool,
}

fn run(cmd: &mut Command) -> Result<(), crate::Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| crate::Error::Capture(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(crate::Error::Capture(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The `iptables-restore` input that makes the chain redirect each frontend to its port.
fn rules(chain: &str, redirects: &[(Frontend, u16)]) -> String {
    let mut text = format!("*nat\n:{chain} - [0:0]\n-F {chain}\n");
    for ((ip, port, proto), to) in redirects {
        let IpAddr::V4(ip) = ip else { continue };
        let p = match proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        text.push_str(&format!(
            "-A {chain} -d {ip}/32 -p {p} -m {p} --dport {port} -j REDIRECT --to-ports {to}\n"
        ));
    }
    text.push_str("COMMIT\n");
    text
}

impl Capture {
    /// Creates the chain (empty) and the jumps to it. Needs `CAP_NET_ADMIN` and iptables.
    pub fn install(chain: &str) -> Result<Capture, crate::Error> {
        let mut c = Capture {
            chain: chain.to_owned(),
            installed: true,
        };
        c.sync(&[])?;
        for hook in ["OUTPUT", "PREROUTING"] {
            let exists = Command::new("iptables")
                .args(["-w", "-t", "nat", "-C", hook, "-j", chain])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !exists
                && let Err(e) = run(Command::new("iptables")
                    .args(["-w", "-t", "nat", "-I", hook, "1", "-j", chain]))
            {
                c.remove();
                return Err(e);
            }
        }
        Ok(c)
    }

    /// Makes the chain redirect exactly these frontends to these local ports.
    pub fn sync(&mut self, redirects: &[(Frontend, u16)]) -> Result<(), crate::Error> {
        let text = rules(&self.chain, redirects);
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| crate::Error::Capture(format!("iptables-restore: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| crate::Error::Capture(format!("iptables-restore: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| crate::Error::Capture(format!("iptables-restore: {e}")))?;
        if !out.status.success() {
            return Err(crate::Error::Capture(format!(
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Takes the jumps and the chain away.
    pub fn remove(&mut self) {
        if !self.installed {
            return;
        }
        self.installed = false;
        for hook in ["OUTPUT", "PREROUTING"] {
            while run(Command::new("iptables").args([
                "-w",
                "-t",
                "nat",
                "-D",
                hook,
                "-j",
                &self.chain,
            ]))
            .is_ok()
            {}
        }
        let _ = run(Command::new("iptables").args(["-w", "-t", "nat", "-F", &self.chain]));
        let _ = run(Command::new("iptables").args(["-w", "-t", "nat", "-X", &self.chain]));
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Puts `ip` on the dummy interface [`DUMMY`] (made if missing), so the DNS server can listen on
/// upstream's link-local address; where the kernel has no dummy interfaces (some containers), on
/// the loopback interface instead. Returns the interface used. Needs `CAP_NET_ADMIN` and iproute2.
pub fn dummy_address(ip: IpAddr) -> Result<&'static str, crate::Error> {
    let exists = |dev: &str| {
        Command::new("ip")
            .args(["link", "show", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let dev = if exists(DUMMY) {
        DUMMY
    } else {
        match run(Command::new("ip").args(["link", "add", DUMMY, "type", "dummy"])) {
            Ok(()) => DUMMY,
            Err(e) => {
                tracing::warn!(error = %e, "mesh: no dummy interface, the DNS address goes on lo");
                "lo"
            }
        }
    };
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let has = Command::new("ip")
        .args(["addr", "show", "dev", dev])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")));
    if !has {
        run(Command::new("ip").args(["addr", "add", &format!("{ip}/{prefix}"), "dev", dev]))?;
    }
    run(Command::new("ip").args(["link", "set", dev, "up"]))?;
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_each_ipv4_frontend() {
        let text = rules(
            CHAIN,
            &[
                (("10.96.0.10".parse().unwrap(), 8080, Protocol::Tcp), 40001),
                (("10.96.0.11".parse().unwrap(), 53, Protocol::Udp), 40002),
                (("fd00::1".parse().unwrap(), 80, Protocol::Tcp), 40003),
            ],
        );
        assert_eq!(
            text,
            "*nat\n:KUBEEDGE-MESH - [0:0]\n-F KUBEEDGE-MESH\n\
             -A KUBEEDGE-MESH -d 10.96.0.10/32 -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 40001\n\
             -A KUBEEDGE-MESH -d 10.96.0.11/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 40002\n\
             COMMIT\n"
        );
    }
}
