//! What a request to one of the process's own HTTP APIs (the proxy's admin API, the control
//! plane's API) must look like before anything else is read: addressed to this server by one
//! of its names, and, for the control API, not driven by a web page.
//!
//! DNS rebinding lets a web page point a name it controls at 127.0.0.1 and then read what that
//! address serves, as its own origin: the request arrives with the page's name in `Host`. A
//! server that answers only to its own names and addresses defeats it. An IP literal cannot be
//! rebound, so the server's own address, written as a number, is always fine.

use std::net::{IpAddr, SocketAddr};

/// Whether a request with this `Host` value (`None`: an HTTP/1.0 request without one, which
/// no browser sends) is addressed to a server bound at `bound` and known by `names`: a name
/// in `names` or `localhost` (when bound to loopback or to every address), or the bound IP
/// address itself (any IP when bound to every address; any loopback address when bound to
/// loopback). The port is not compared; case and a trailing dot do not matter.
pub fn host_allowed(host: Option<&[u8]>, names: &[String], bound: SocketAddr) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Ok(host) = std::str::from_utf8(ringmesh_core::head::host_of(host)) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let bound_ip = bound.ip();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        return bound_ip.is_unspecified()
            || ip == bound_ip
            || (ip.is_loopback() && bound_ip.is_loopback());
    }
    if host == "localhost" {
        return bound_ip.is_loopback() || bound_ip.is_unspecified();
    }
    names
        .iter()
        .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_names_and_addresses_are_accepted() {
        let names = ["cp.mesh.internal".to_string()];
        let loopback: SocketAddr = "127.0.0.1:9900".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9900".parse().unwrap();
        let one: SocketAddr = "10.1.2.3:9900".parse().unwrap();
        for (host, bound, ok) in [
            (Some("127.0.0.1:9900"), loopback, true),
            (Some("127.0.0.1"), loopback, true),
            (Some("[::1]:9900"), loopback, true),
            (Some("localhost:9900"), loopback, true),
            (Some("LOCALHOST."), loopback, true),
            (Some("cp.mesh.internal:443"), loopback, true),
            (Some("CP.Mesh.Internal."), one, true),
            (None, loopback, true),
            // A rebound name, however it is spelled.
            (Some("attacker.example:9900"), loopback, false),
            (Some("attacker.example"), any, false),
            (Some("127.0.0.1.attacker.example"), loopback, false),
            (Some("localhost.attacker.example"), loopback, false),
            (Some("cp.mesh.internal.evil"), loopback, false),
            (Some("10.9.9.9:9900"), one, false),
            (Some("10.1.2.3:9900"), one, true),
            (Some("10.9.9.9:9900"), any, true),
            (Some("localhost"), one, false),
            (Some("\u{ff}"), loopback, false),
        ] {
            let h = host.map(str::as_bytes);
            assert_eq!(host_allowed(h, &names, bound), ok, "{host:?} on {bound}");
        }
    }
}
