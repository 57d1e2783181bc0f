//! Listeners: each worker binds its own SO_REUSEPORT socket per configured listener, so the
//! kernel spreads connections across workers and a connection lives on one worker for life.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::TcpListener;
use socket2::{Domain, Socket, Type};

use crate::snapshot::Protocol;
use crate::worker::state::Worker;

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds a listening socket with SO_REUSEPORT and TCP_NODELAY (inherited by accepted sockets,
/// which saves a system call per connection).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A running accept loop.
pub(crate) struct ListenerTask {
    /// The address it is bound to.
    pub bind: SocketAddr,
    canceller: Option<Canceller>,
}

impl ListenerTask {
    /// Stops accepting; the socket closes when the loop ends.
    pub fn stop(&mut self) {
        if let Some(c) = self.canceller.take() {
            let _ = c.cancel();
        }
    }
}

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts accepting on `sock` for the listener called `name`.
pub(crate) fn start(
    worker: Rc<Worker>,
    name: Arc<str>,
    bind: SocketAddr,
    sock: TcpListener,
) -> ListenerTask {
    let canceller = Canceller::new();
    let handle = canceller.handle();
    monoio::spawn(async move {
        loop {
            // A cancelable accept: a plain one dropped mid-flight leaks the fd it returns
            // (monoio 0.2.4).
            match sock.cancelable_accept(handle.clone()).await {
                Ok((stream, peer)) => {
                    // An IPv4 client of a dual-stack (`[::]`) listener as the IPv4 address it
                    // is: X-Forwarded-For, the access log and policies see what the client is.
                    let peer = crate::sys::unmapped(peer);
                    let view = worker.view();
                    let Some(li) = view.listener_index(&name) else {
                        continue;
                    };
                    match &view.snapshot.listeners[li].protocol {
                        Protocol::Http(h) if h.inbound.is_some() => {
                            drop(view);
                            monoio::spawn(crate::task::contained(crate::inbound::serve(
                                worker.clone(),
                                name.clone(),
                                bind,
                                stream,
                                peer,
                            )));
                        }
                        Protocol::Http(h) if h.outbound.is_some() => {
                            drop(view);
                            monoio::spawn(crate::task::contained(crate::outbound::serve(
                                worker.clone(),
                                name.clone(),
                                bind,
                                stream,
                                peer,
                            )));
                        }
                        Protocol::Http(_) => {
                            drop(view);
                            let accepted = crate::proxy::Accepted {
                                stream,
                                peer,
                                destination: None,
                                plaintext: false,
                            };
                            let conn = crate::proxy::serve(
                                worker.clone(),
                                name.clone(),
                                Box::new(accepted),
                            );
                            monoio::spawn(crate::task::contained(conn));
                        }
                        Protocol::Tcp { .. } => {
                            monoio::spawn(crate::task::contained(crate::tcp::serve(
                                worker.clone(),
                                view,
                                li,
                                stream,
                                peer,
                            )));
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => break,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = %name, worker = worker.id, "listener stopped");
    });
    ListenerTask {
        bind,
        canceller: Some(canceller),
    }
}
