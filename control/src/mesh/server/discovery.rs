//! DNS discovery: names resolved on a thread of their own (blocking `getaddrinfo`), results
//! applied on the runtime's thread; a failing name keeps its last addresses.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

/// Why a name did not resolve. Cloned: each replica keeps its last answer per name.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum DnsError {
    /// The lookup failed (`getaddrinfo`'s error).
    #[error("{0}")]
    Lookup(Arc<std::io::Error>),
    /// The lookup succeeded with no address.
    #[error("no addresses")]
    NoAddresses,
}

/// Applies what the DNS thread found.
pub(super) async fn discovered(
    plane: Rc<Plane>,
    found: flume::Receiver<(String, Result<Vec<SocketAddr>, DnsError>)>,
) {
    while let Ok((name, result)) = found.recv_async().await {
        if let Some(store) = &plane.store {
            // The leader writes it to the store; every replica takes it from there.
            replicated::resolved(&plane.st.borrow(), store, &name, &result);
            continue;
        }
        let changed = {
            let mut st = plane.st.borrow_mut();
            let entry = st.dns.entry(name.clone()).or_default();
            let changed = match result {
                Ok(addrs) => {
                    entry.error = None;
                    entry.at = Some(SystemTime::now());
                    let changed = entry.addrs != addrs;
                    entry.addrs = addrs;
                    changed
                }
                Err(e) => {
                    let e = e.to_string();
                    if entry.error.as_deref() != Some(&e) {
                        tracing::warn!(%name, error = %e, "DNS: cannot resolve; keeping the last addresses");
                    }
                    entry.error = Some(e);
                    false
                }
            };
            if changed {
                let users = st.dns_users(&name);
                st.changed_clusters(&users);
            }
            changed
        };
        if changed {
            plane.signal.notify();
        }
    }
}

/// The DNS thread: resolves every name now and then each interval.
pub(super) fn resolve_loop(
    names: &flume::Receiver<(Vec<String>, Duration)>,
    found: &flume::Sender<(String, Result<Vec<SocketAddr>, DnsError>)>,
) {
    use std::net::ToSocketAddrs;
    let Ok((mut list, mut interval)) = names.recv() else {
        return;
    };
    loop {
        for name in &list {
            let r = match name.to_socket_addrs() {
                Ok(it) => {
                    let mut v: Vec<SocketAddr> = it.collect();
                    v.sort();
                    v.dedup();
                    if v.is_empty() {
                        Err(DnsError::NoAddresses)
                    } else {
                        Ok(v)
                    }
                }
                Err(e) => Err(DnsError::Lookup(Arc::new(e))),
            };
            if found.send((name.clone(), r)).is_err() {
                return;
            }
        }
        match names.recv_timeout(interval) {
            Ok(mut next) => {
                while let Ok(n) = names.try_recv() {
                    next = n;
                }
                // Only new names need resolving before the interval is up.
                let fresh = next.0.iter().any(|n| !list.contains(n));
                (list, interval) = next;
                if !fresh {
                    match names.recv_timeout(interval) {
                        Ok(n) => (list, interval) = n,
                        Err(flume::RecvTimeoutError::Timeout) => {}
                        Err(flume::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
    }
}
