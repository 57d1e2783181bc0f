//! Access control: who may call what, decided before routing.
//!
//! A policy allows or denies the requests it matches: by the client's identity (the SPIFFE ID
//! of its certificate), its source address range, and the request's host, path, method and
//! headers. A matching deny wins over any allow, whatever their order; a request no policy
//! matches gets the default (allow unless `default_policy: deny`). A deny in audit mode only
//! counts and logs what it would deny. On a TCP listener only identity and source apply: a
//! policy with an HTTP condition never matches a TCP connection.
//!
//! A policy may be *scoped* to this workload (`applies_to`, which the control plane sets for
//! the nodes a policy names), and to some of its ports. It is then checked only for requests to
//! those ports, and a scoped allow makes them allow-listed: a request there that no allow
//! matches is denied, whatever the default (as Istio's ALLOW policies on a workload work). So
//! "only edge may call back" is one scoped allow on back, and constrains nothing else.

use std::net::IpAddr;
use std::sync::Arc;

use crate::route::{HostMatch, Match, RequestView};

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS` (or a bare address: one host).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { addr, bits })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a policy does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name, for metrics and logs (`policies[i]` when not given).
    pub name: Arc<str>,
    pub action: Action,
    /// Count and log what it would deny, without denying.
    pub audit: bool,
    /// Exactly this identity.
    pub identity: Option<Box<str>>,
    /// The client's address in this range.
    pub source: Option<Cidr>,
    /// Host, path, method and headers, as routes match them.
    pub request: Match,
    /// The policy has request conditions (even ones that match every request, such as
    /// `path_prefix: /`): it never matches a TCP connection.
    pub http: bool,
    /// Scoped to this workload: an allow makes the requests it applies to allow-listed.
    pub scoped: bool,
    /// Checked only for requests to these ports (the destination a sidecar's listener took,
    /// else the listener's own port); `None`: every port.
    pub ports: Option<Box<[u16]>>,
}

impl Policy {
    fn has_http_conditions(&self) -> bool {
        self.http || self.request != Match::default()
    }

    fn applies(&self, who: &Caller<'_>) -> bool {
        // A scoped policy guards the workload's own ports: its calls out are not its business.
        if self.scoped && who.egress {
            return false;
        }
        self.ports.as_ref().is_none_or(|p| p.contains(&who.port))
    }

    fn matches(&self, who: &Caller<'_>, req: Option<&impl RequestView>) -> bool {
        if let Some(id) = &self.identity {
            if who.identity != Some(&**id) {
                return false;
            }
        }
        if let Some(net) = &self.source {
            if !net.contains(who.source) {
                return false;
            }
        }
        if !self.has_http_conditions() {
            return true;
        }
        match req {
            Some(req) => request_matches(&self.request, req),
            None => false,
        }
    }
}

fn request_matches(m: &Match, req: &impl RequestView) -> bool {
    match &m.host {
        Some(HostMatch::Exact(h)) if !req.host().eq_ignore_ascii_case(h) => return false,
        Some(HostMatch::Suffix(s)) => {
            let host = req.host();
            if host.len() <= s.len() || !host[host.len() - s.len()..].eq_ignore_ascii_case(s) {
                return false;
            }
        }
        _ => {}
    }
    crate::route::matches_rest(m, req)
}

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub identity: Option<&'a str>,
    pub source: IpAddr,
    /// The port the request was made to (a sidecar listener's original destination port, else
    /// the listener's).
    pub port: u16,
    /// A call the workload makes (on a sidecar's outbound listener), not one made to it.
    pub egress: bool,
}

/// The policies in force and the default.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub list: Vec<Policy>,
    pub default_deny: bool,
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Denied by the policy at this position.
    Deny(usize),
    /// Denied because no policy allowed it.
    DenyByDefault,
}

impl Policies {
    /// Whether any policy applies at all (when none does and the default allows, nothing is
    /// checked).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && !self.default_deny
    }

    /// Decides for a request (`req`; `None` for a TCP connection). `audited` is called with
    /// every audit-mode deny that matched.
    pub fn check(
        &self,
        who: &Caller<'_>,
        req: Option<&impl RequestView>,
        mut audited: impl FnMut(usize),
    ) -> Verdict {
        // Every policy is looked at, so that audit policies count every request they match,
        // enforced denials included.
        let mut allowed = false;
        let mut allow_listed = false;
        let mut denied = None;
        for (i, p) in self.list.iter().enumerate() {
            if !p.applies(who) {
                continue;
            }
            allow_listed |= p.scoped && p.action == Action::Allow;
            if !p.matches(who, req) {
                continue;
            }
            match (p.action, p.audit) {
                (Action::Deny, false) => {
                    denied.get_or_insert(i);
                }
                (Action::Deny, true) => audited(i),
                (Action::Allow, _) => allowed = true,
            }
        }
        if let Some(i) = denied {
            Verdict::Deny(i)
        } else if allowed || !(self.default_deny || allow_listed) {
            Verdict::Allow
        } else {
            Verdict::DenyByDefault
        }
    }

    /// Decides for a TCP connection: only identity and source apply.
    pub fn check_connection(&self, who: &Caller<'_>, audited: impl FnMut(usize)) -> Verdict {
        self.check(who, None::<&NoRequest>, audited)
    }

    /// The name a verdict is counted under.
    pub fn name_of(&self, v: Verdict) -> &str {
        match v {
            Verdict::Deny(i) => self.list.get(i).map_or("default", |p| &p.name),
            _ => "default",
        }
    }
}

/// The request a TCP connection does not have.
struct NoRequest;

impl RequestView for NoRequest {
    fn host(&self) -> &[u8] {
        b""
    }
    fn path(&self) -> &[u8] {
        b""
    }
    fn method(&self) -> &[u8] {
        b""
    }
    fn has_header(&self, _: &[u8], _: &[u8]) -> bool {
        false
    }
    fn any_header(&self, _: &[u8], _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::PathMatch;

    struct Req(&'static str, &'static str, &'static str);

    impl RequestView for Req {
        fn host(&self) -> &[u8] {
            self.0.as_bytes()
        }
        fn path(&self) -> &[u8] {
            self.1.as_bytes()
        }
        fn method(&self) -> &[u8] {
            self.2.as_bytes()
        }
        fn has_header(&self, _: &[u8], _: &[u8]) -> bool {
            false
        }
        fn any_header(&self, _: &[u8], _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            false
        }
    }

    fn policy(action: Action, audit: bool, f: impl FnOnce(&mut Policy)) -> Policy {
        let mut p = Policy {
            name: "p".into(),
            action,
            audit,
            identity: None,
            source: None,
            request: Match::default(),
            http: false,
            scoped: false,
            ports: None,
        };
        f(&mut p);
        p
    }

    #[test]
    fn cidr_ranges() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            !Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.2".parse().unwrap())
        );
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense/8"), None);
    }

    #[test]
    fn deny_wins_and_the_default_decides_the_rest() {
        let web = "spiffe://mesh.local/ns/default/sa/web";
        let ps = Policies {
            list: vec![
                policy(Action::Allow, false, |p| p.identity = Some(web.into())),
                policy(Action::Deny, false, |p| {
                    p.request.path = Some(PathMatch::Prefix(b"/admin".to_vec().into()))
                }),
                policy(Action::Deny, true, |p| p.source = Cidr::parse("10.0.0.0/8")),
            ],
            default_deny: true,
        };
        let from = |identity, source: &str| Caller {
            identity,
            source: source.parse().unwrap(),
            port: 80,
            egress: false,
        };
        let get = |path| Some(Req("a", path, "GET"));
        let mut audits = Vec::new();
        // Allowed by identity; a deny later in the list still wins.
        assert_eq!(
            ps.check(&from(Some(web), "127.0.0.1"), get("/x").as_ref(), |_| {}),
            Verdict::Allow
        );
        assert_eq!(
            ps.check(
                &from(Some(web), "127.0.0.1"),
                get("/admin/x").as_ref(),
                |_| {}
            ),
            Verdict::Deny(1)
        );
        // No allow matched: the default denies.
        assert_eq!(
            ps.check(&from(None, "127.0.0.1"), get("/x").as_ref(), |_| {}),
            Verdict::DenyByDefault
        );
        // Audit: counted, not enforced.
        assert_eq!(
            ps.check(&from(Some(web), "10.1.2.3"), get("/x").as_ref(), |i| audits
                .push(i)),
            Verdict::Allow
        );
        assert_eq!(audits, vec![2]);
        // TCP: the path policy cannot match.
        assert_eq!(
            ps.check_connection(&from(Some(web), "127.0.0.1"), |_| {}),
            Verdict::Allow
        );
    }

    #[test]
    fn a_scoped_allow_allow_lists_its_ports_and_nothing_else() {
        let edge = "spiffe://mesh.local/ns/default/sa/edge";
        let ps = Policies {
            list: vec![
                // Only edge may call port 8080 of this workload.
                policy(Action::Allow, false, |p| {
                    p.identity = Some(edge.into());
                    p.scoped = true;
                    p.ports = Some([8080].into());
                }),
                // A deny scoped to port 9090.
                policy(Action::Deny, false, |p| {
                    p.source = Cidr::parse("10.0.0.0/8");
                    p.scoped = true;
                    p.ports = Some([9090].into());
                }),
            ],
            default_deny: false,
        };
        let to = |identity, port| Caller {
            identity,
            source: "10.1.1.1".parse().unwrap(),
            port,
            egress: false,
        };
        let get = Some(Req("a", "/", "GET"));
        let check = |who: &Caller<'_>| ps.check(who, get.as_ref(), |_| {});
        assert_eq!(check(&to(Some(edge), 8080)), Verdict::Allow);
        assert_eq!(
            check(&to(Some("spiffe://mesh.local/x"), 8080)),
            Verdict::DenyByDefault
        );
        assert_eq!(check(&to(None, 8080)), Verdict::DenyByDefault);
        // Other ports keep the default (allow), but for the scoped deny.
        assert_eq!(check(&to(None, 8081)), Verdict::Allow);
        assert_eq!(check(&to(None, 9090)), Verdict::Deny(1));
        // A TCP connection to the allow-listed port is held to it as well.
        assert_eq!(
            ps.check_connection(&to(None, 8080), |_| {}),
            Verdict::DenyByDefault
        );
        assert_eq!(
            ps.check_connection(&to(Some(edge), 8080), |_| {}),
            Verdict::Allow
        );
    }
}
