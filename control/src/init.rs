//! `ringmesh init`: the netfilter rules that make a workload's TCP go through its sidecar,
//! installed in the workload's network namespace (as `linkerd-init` and `istio-iptables` do).
//!
//! Why nftables: one `nft -f` run is one transaction, so the rules are replaced whole or not at
//! all (no window where half of them redirect); one `inet` table covers IPv4 and IPv6 alike;
//! and everything lives in a table of its own, so `--remove` deletes exactly what `init` added
//! and nothing of anyone else's. (Debian's `iptables` is itself a front end to nftables.)
//!
//! What is redirected:
//! - **outbound**: TCP the workload sends (the `output` hook) goes to the outbound port, except
//!   the proxy's own connections (`--proxy-uid`: no loops), loopback traffic to `127.0.0.0/8`
//!   and `::1` (another container of the pod, or the proxy's own admin), and the skipped ports
//!   and CIDRs;
//! - **inbound**: TCP arriving from outside (the `prerouting` hook) goes to the inbound port,
//!   except the skipped ports and the proxy's own two ports. Loopback traffic never passes
//!   there (its NAT is decided on the way out).
//!
//! The original destination survives in conntrack, where the proxy reads it back with
//! `SO_ORIGINAL_DST`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The table `init` owns.
pub const TABLE: &str = "ringmesh";

/// What `ringmesh init` is asked to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The user the proxy runs as: its connections are never redirected.
    pub proxy_uid: u32,
    /// Where outbound connections are redirected.
    pub outbound_port: u16,
    /// Where inbound connections are redirected; `None` (the default while ringmesh has no
    /// inbound listener to take them): inbound is not intercepted.
    pub inbound_port: Option<u16>,
    /// Inbound destination ports left alone.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            proxy_uid: 0,
            outbound_port: 15001,
            inbound_port: None,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length is 0 to {max}"))?,
        };
        let masked = match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::from((bits & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::from((bits & mask).to_be_bytes())
            }
        };
        if masked != addr {
            return Err(format!(
                "`{s}` has host bits set: did you mean {masked}/{len}?"
            ));
        }
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Parses a comma-separated list (`80,443` or `10.0.0.0/8,fd00::/8`), naming `flag` in errors.
pub fn parse_list<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<T>().map_err(|e| format!("{flag}: `{p}`: {e}")))
        .collect()
}

impl InitOptions {
    /// Checks what no rule can express sensibly.
    pub fn check(&self) -> Result<(), String> {
        if self.outbound_port == 0 {
            return Err("--outbound-port: a port is 1 to 65535".into());
        }
        if self.inbound_port == Some(0) {
            return Err("--inbound-port: a port is 1 to 65535".into());
        }
        if Some(self.outbound_port) == self.inbound_port {
            return Err("--inbound-port and --outbound-port must differ".into());
        }
        if self.proxy_uid == 0 {
            // Root's traffic bypassing the proxy would let any root process of the workload
            // go around it, and a proxy run as root is one the rules cannot tell apart.
            return Err("--proxy-uid: the proxy must run as a user of its own, not root".into());
        }
        if let Some(p) = self.skip_inbound_ports.iter().find(|p| **p == 0) {
            return Err(format!("--skip-inbound-ports: {p} is not a port"));
        }
        if let Some(p) = self.skip_outbound_ports.iter().find(|p| **p == 0) {
            return Err(format!("--skip-outbound-ports: {p} is not a port"));
        }
        Ok(())
    }

    /// The nftables script that installs the rules, replacing any earlier ones in one
    /// transaction (so running it twice leaves the same rules).
    pub fn script(&self) -> String {
        let mut s = String::new();
        // Creating the table first makes the delete succeed when there was none.
        let _ = writeln!(s, "table inet {TABLE} {{}}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");
        let _ = writeln!(s, "\tchain output {{");
        let _ = writeln!(s, "\t\ttype nat hook output priority -100; policy accept;");
        let _ = writeln!(s, "\t\tmeta l4proto != tcp return");
        let _ = writeln!(
            s,
            "\t\tmeta skuid {} return comment \"the proxy's own connections\"",
            self.proxy_uid
        );
        let _ = writeln!(
            s,
            "\t\toifname \"lo\" ip daddr 127.0.0.0/8 return comment \"loopback, not the workload's calls out\""
        );
        let _ = writeln!(s, "\t\toifname \"lo\" ip6 daddr ::1 return");
        let (v4, v6): (Vec<Cidr>, Vec<Cidr>) = self
            .skip_outbound_cidrs
            .iter()
            .partition(|c| c.addr.is_ipv4());
        if !v4.is_empty() {
            let _ = writeln!(s, "\t\tip daddr {{ {} }} return", join(&v4));
        }
        if !v6.is_empty() {
            let _ = writeln!(s, "\t\tip6 daddr {{ {} }} return", join(&v6));
        }
        if !self.skip_outbound_ports.is_empty() {
            let _ = writeln!(
                s,
                "\t\ttcp dport {{ {} }} return",
                join(&self.skip_outbound_ports)
            );
        }
        let _ = writeln!(
            s,
            "\t\tmeta l4proto tcp redirect to :{}",
            self.outbound_port
        );
        let _ = writeln!(s, "\t}}");
        if let Some(inbound) = self.inbound_port {
            let mut skip = vec![self.outbound_port, inbound];
            skip.extend(&self.skip_inbound_ports);
            skip.sort_unstable();
            skip.dedup();
            let _ = writeln!(s, "\tchain prerouting {{");
            let _ = writeln!(
                s,
                "\t\ttype nat hook prerouting priority -100; policy accept;"
            );
            let _ = writeln!(s, "\t\tmeta l4proto != tcp return");
            let _ = writeln!(s, "\t\ttcp dport {{ {} }} return", join(&skip));
            let _ = writeln!(s, "\t\tmeta l4proto tcp redirect to :{inbound}");
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// The nftables script that removes the rules (and succeeds when there are none).
pub fn remove_script() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `script` through `nft -f -`: all of it is applied, or none.
pub fn apply(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `nft` (install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the rules (nothing was changed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `ringmesh init` with its arguments (after `init`): installs, prints (`--dry-run`) or
/// removes (`--remove`) the rules.
pub fn command(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<(), String> {
    use lexopt::prelude::*;
    let mut o = InitOptions::default();
    let (mut dry_run, mut remove, mut uid) = (false, false, None);
    let (mut accelerate, mut cgroup) = (false, None::<std::path::PathBuf>);
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(err)? {
        let flag = match arg {
            Long(f) => format!("--{f}"),
            other => return Err(other.unexpected().to_string()),
        };
        match flag.as_str() {
            "--dry-run" => dry_run = true,
            "--remove" => remove = true,
            "--accelerate" => accelerate = true,
            _ => {
                let v = p
                    .value()
                    .map_err(err)?
                    .into_string()
                    .map_err(|_| format!("{flag}: not UTF-8"))?;
                let port = |v: &str| {
                    v.parse::<u16>()
                        .map_err(|_| format!("{flag}: `{v}` is not a port"))
                };
                match flag.as_str() {
                    "--proxy-uid" => {
                        uid = Some(
                            v.parse::<u32>()
                                .map_err(|_| format!("--proxy-uid: `{v}` is not a user id"))?,
                        )
                    }
                    "--cgroup" => cgroup = Some(v.into()),
                    "--outbound-port" => o.outbound_port = port(&v)?,
                    "--inbound-port" => o.inbound_port = Some(port(&v)?),
                    "--skip-inbound-ports" => o.skip_inbound_ports = parse_list(&flag, &v)?,
                    "--skip-outbound-ports" => o.skip_outbound_ports = parse_list(&flag, &v)?,
                    "--skip-outbound-cidrs" => o.skip_outbound_cidrs = parse_list(&flag, &v)?,
                    _ => return Err(format!("unknown option {flag}")),
                }
            }
        }
    }
    if accelerate && cgroup.is_none() {
        // Named, never guessed: a default (init's own cgroup) run from a host shell would be
        // the administrator's session, not the workload.
        return Err("--accelerate needs --cgroup DIR: the workload's cgroup v2 directory".into());
    }
    let script = if remove {
        remove_script()
    } else {
        o.proxy_uid = uid.ok_or("--proxy-uid is required: the user the proxy runs as")?;
        o.check()?;
        o.script()
    };
    if dry_run {
        print!("{script}");
        if accelerate {
            println!("# and the kernel shortcut (eBPF) attached to the workload's cgroup");
        }
        return Ok(());
    }
    apply(&script)?;
    match (remove, &cgroup) {
        (true, Some(cgroup)) => remove_shortcut(cgroup)?,
        (false, Some(cgroup)) if accelerate => accelerate_workload(cgroup, o.proxy_uid),
        _ => {}
    }
    Ok(())
}

/// `--accelerate`: attaches the kernel shortcut. Where it cannot be (no privilege, an older
/// kernel, cgroup v1, a build without clang), the sidecar works as before: `init` says why and
/// succeeds, and the proxy reports it in `ringmesh_accelerated`.
fn accelerate_workload(cgroup: &std::path::Path, proxy_uid: u32) {
    use crate::accelerate::load::{Installed, Workload, install};
    let outcome = Workload::find(cgroup).and_then(|w| install(&w, proxy_uid).map(|i| (w, i)));
    match outcome {
        Ok((w, Installed::Attached)) => eprintln!(
            "ringmesh init: kernel shortcut attached to {} (pinned in {})",
            w.cgroup.display(),
            w.pins().display()
        ),
        Ok((w, Installed::AlreadyAttached)) => eprintln!(
            "ringmesh init: kernel shortcut already attached to {}",
            w.cgroup.display()
        ),
        Err(why) => {
            eprintln!("ringmesh init: no kernel shortcut ({why}); the sidecar works without it")
        }
    }
}

/// `--remove --cgroup DIR`: detaches the workload's shortcut as well.
fn remove_shortcut(cgroup: &std::path::Path) -> Result<(), String> {
    use crate::accelerate::load::{Workload, remove};
    let w = Workload::find(cgroup)?;
    if remove(&w)? {
        eprintln!(
            "ringmesh init: kernel shortcut removed from {}",
            w.cgroup.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_read_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!(
            parse_list::<u16>("--skip-outbound-ports", "22,x")
                .unwrap_err()
                .contains("--skip-outbound-ports")
        );
    }

    #[test]
    fn the_script_replaces_the_table_whole_and_skips_the_proxy() {
        let o = InitOptions {
            proxy_uid: 1337,
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![5432, 25],
            skip_outbound_cidrs: vec![
                "169.254.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            inbound_port: Some(15006),
            ..InitOptions::default()
        };
        o.check().unwrap();
        let s = o.script();
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        assert_eq!(
            &lines[..3],
            [
                "table inet ringmesh {}",
                "delete table inet ringmesh",
                "table inet ringmesh {"
            ]
        );
        let skuid = lines
            .iter()
            .position(|l| l.starts_with("meta skuid 1337 return"))
            .unwrap();
        let redirect = lines
            .iter()
            .position(|l| *l == "meta l4proto tcp redirect to :15001")
            .unwrap();
        assert!(skuid < redirect);
        assert!(lines.contains(&"ip daddr { 169.254.0.0/16 } return"));
        assert!(lines.contains(&"ip6 daddr { fd00::/8 } return"));
        assert!(lines.contains(&"tcp dport { 5432, 25 } return"));
        assert!(lines.contains(&"tcp dport { 22, 15001, 15006 } return"));
        assert!(lines.contains(&"meta l4proto tcp redirect to :15006"));
    }

    #[test]
    fn bad_options_are_refused() {
        let root = InitOptions::default();
        assert!(root.check().unwrap_err().contains("--proxy-uid"));
        let same = InitOptions {
            proxy_uid: 1,
            inbound_port: Some(15001),
            ..InitOptions::default()
        };
        assert!(same.check().is_err());
        let outbound_only = InitOptions {
            proxy_uid: 1,
            ..InitOptions::default()
        };
        assert!(!outbound_only.script().contains("prerouting"));
    }
}
