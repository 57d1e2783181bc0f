//! A sidecar's outbound listener: the connections an unmodified application makes, redirected
//! here by `ringmesh init`'s netfilter rules, each sent where the application asked.
//!
//! ```text
//! accept ─ original destination (SO_ORIGINAL_DST) ─┬─ a mesh service ─ detect ─┬─ HTTP: the proxy's path, routed by service
//!                                                  │                           └─ opaque: TCP balanced over the service
//!                                                  └─ elsewhere ─ passthrough (or refused)
//! ```
//!
//! Detection reads nothing: it peeks at the first bytes (`MSG_PEEK`), so that what it saw is
//! still in the socket for whichever path takes the connection. A client that sends nothing
//! for `detect_timeout` is taken as opaque TCP (its server speaks first); ports declared opaque
//! skip the wait.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::error::ErrorKind;
use crate::metrics::Redirected;
use crate::policy::Caller;
use crate::redirect;
use crate::worker::state::Worker;

/// What an application's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line, or the HTTP/2 preface (which starts like one: `PRI * HTTP/2.0`).
    Http,
    /// Anything else: TLS, a database protocol, or nothing yet (the server speaks first).
    Opaque,
}

/// Longest method token taken as the start of an HTTP/1.x request line (`OPTIONS`, `PROPFIND`,
/// `VERSION-CONTROL` and friends fit).
const MAX_METHOD: usize = 20;

/// Bytes peeked at: a method, its space, and enough of the target to know its form.
const PEEK: usize = MAX_METHOD + 1 + 8;

/// Classifies the first bytes a client sent. `None`: not enough to tell yet.
///
/// A request line is a method token (RFC 9110 `tchar`s), a space, and a target in one of its
/// forms: origin (`/`), asterisk (`*`, which the HTTP/2 preface's `PRI *` is), absolute
/// (`http://`, `https://`), or authority for CONNECT. Text protocols whose commands also start
/// with a word and a space (memcached's `get k`, Redis's inline `SET k v`) fail the target and
/// stay opaque.
pub fn classify(first: &[u8]) -> Option<Detected> {
    let Some(space) = first.iter().position(|b| *b == b' ') else {
        let token = first.iter().all(|b| crate::head::is_tchar(*b));
        return (first.len() > MAX_METHOD || !token).then_some(Detected::Opaque);
    };
    let (method, target) = (&first[..space], &first[space + 1..]);
    if method.is_empty()
        || method.len() > MAX_METHOD
        || !method.iter().all(|b| crate::head::is_tchar(*b))
    {
        return Some(Detected::Opaque);
    }
    let &start = target.first()?;
    if start == b'/' || start == b'*' || method == b"CONNECT" {
        return Some(Detected::Http);
    }
    for scheme in [&b"http://"[..], b"https://"] {
        let n = target.len().min(scheme.len());
        if target[..n].eq_ignore_ascii_case(&scheme[..n]) {
            return (n == scheme.len()).then_some(Detected::Http);
        }
    }
    Some(Detected::Opaque)
}

/// Serves one connection taken by the outbound listener `name`, bound at `bind`.
pub(crate) async fn serve(
    w: Rc<Worker>,
    name: Arc<str>,
    bind: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let view = w.view();
    let Some((li, http)) = redirect::http_listener(&view, &name) else {
        return;
    };
    let Some(out) = http.outbound.clone() else {
        return;
    };
    let stats = view.listeners[li].stats.clone();
    let dst = match redirect::original_dst(&stream) {
        Ok(dst) if !redirect::loops_back(dst, bind) => dst,
        _ => {
            // Made straight to this listener (no redirect), or redirected back to it: there
            // is nowhere to send it that would not come back here.
            stats.redirected(Redirected::NotRedirected);
            return;
        }
    };
    let in_mesh = out.services.contains_key(&dst);
    // What is not served as HTTP (passed through, or opaque) is held to the connection
    // policies here; HTTP requests meet the request policies in the pipeline.
    let who = Caller {
        identity: None,
        source: peer.ip(),
        port: dst.port(),
        egress: true,
    };
    if !in_mesh && !crate::tcp::admit_connection(&w, &view, li, &who) {
        return;
    }
    drop(view);
    if !in_mesh {
        if !out.passthrough {
            stats.redirected(Redirected::Refused);
            tracing::debug!(listener = &*name, client = %peer, destination = %dst, "outside the mesh: refused");
            return;
        }
        stats.redirected(Redirected::Passthrough);
        tracing::debug!(listener = &*name, client = %peer, destination = %dst, "outside the mesh: passed through");
        let _guard = w.connection(stats.clone());
        let reached =
            crate::tcp::passthrough(&w, stream, dst, out.connect_timeout, out.tcp_idle_timeout)
                .await;
        if !reached {
            stats.local_reply(ErrorKind::ConnectFailed);
        }
        return;
    }
    let detected = if out.is_opaque(dst.port()) {
        Some(Detected::Opaque)
    } else {
        detect(&stream, out.detect_timeout).await
    };
    match detected {
        // Closed before a byte: nothing to forward.
        None => {}
        Some(Detected::Http) => {
            stats.redirected(Redirected::MeshHttp);
            let accepted = crate::proxy::Accepted {
                stream,
                peer,
                destination: Some(dst),
                plaintext: false,
            };
            crate::proxy::serve(w, name, Box::new(accepted)).await;
        }
        Some(Detected::Opaque) => {
            stats.redirected(Redirected::MeshOpaque);
            let _guard = w.connection(stats.clone());
            // The detection may have waited: the service is looked up again in the view now in
            // force (a reload may have renumbered or removed it).
            let view = w.view();
            let Some(ci) = view_service(&view, &name, dst) else {
                stats.local_reply(ErrorKind::NoRoute);
                return;
            };
            let Some(li) = view.listener_index(&name) else {
                return;
            };
            if !crate::tcp::admit_connection(&w, &view, li, &who) {
                return;
            }
            // Over the cluster's TLS: the sidecar on the other side takes it off (its port is
            // declared opaque there).
            let via = crate::tcp::Via {
                idle_timeout: out.tcp_idle_timeout,
                tls: true,
            };
            let client = crate::transport::Transport::Plain(stream);
            crate::tcp::to_cluster(&w, view, ci, client, None, via, &stats).await;
        }
    }
}

/// The mesh service `dst` is, in `view`'s outbound listener `name`.
fn view_service(
    view: &crate::worker::view::View,
    name: &Arc<str>,
    dst: SocketAddr,
) -> Option<usize> {
    let (_, http) = redirect::http_listener(view, name)?;
    http.outbound.as_ref()?.services.get(&dst).copied()
}

/// Waits for the client's first bytes, for at most `timeout`, and classifies them without
/// taking them from the socket. `None`: the client closed (or failed) before sending any.
async fn detect(stream: &TcpStream, timeout: Duration) -> Option<Detected> {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; PEEK];
    // Waits between peeks at a partial request line, growing: readiness would answer at once,
    // the bytes being there.
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match redirect::peek(stream, &mut first, deadline).await {
            redirect::Peeked::Bytes(n) => n,
            redirect::Peeked::Closed => return None,
            redirect::Peeked::TimedOut => return Some(Detected::Opaque),
        };
        if let Some(d) = classify(&first[..n]) {
            return Some(d);
        }
        if n == first.len() {
            return Some(Detected::Opaque);
        }
        monoio::select! {
            _ = monoio::time::sleep(pause) => {},
            _ = crate::sleep_until(deadline) => return Some(Detected::Opaque),
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_preface_are_http_anything_else_is_opaque() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http)),
            (b"POST ", None),
            (b"POST /", Some(Detected::Http)),
            (b"GET http://a/ HTTP/1.1", Some(Detected::Http)),
            (b"GET HTT", None),
            (b"CONNECT a:443 HTTP/1.1", Some(Detected::Http)),
            (b"get k\r\n", Some(Detected::Opaque)),
            (b"SET k v\r\n", Some(Detected::Opaque)),
            (b"NICK x\r\n", Some(Detected::Opaque)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Detected::Http)),
            (b"VERSION-CONTROL /x", Some(Detected::Http)),
            (b"AAAAAAAAAAAAAAAAAAAA /", Some(Detected::Http)),
            (b"AAAAAAAAAAAAAAAAAAAAA /", Some(Detected::Opaque)),
            (b"GE", None),
            (b"", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Opaque)),
            (b" GET", Some(Detected::Opaque)),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Detected::Opaque)),
            (b"SSH-2.0-OpenSSH_9.2p1 Debian", Some(Detected::Opaque)),
            (b"AAAAAAAAAAAAAAAAAAAAAAAA", Some(Detected::Opaque)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
