//! The server side of the adapter without sockets, for fuzzing.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;

use super::{Conn, Next, Shared};

/// Feeds `input` to a server connection in pieces split at `cuts`, as if it came off the
/// network, then tries to send `reply` and to close: the adapter's processing without sockets,
/// for fuzzing. Returns whether the handshake completed.
pub fn drive_server(config: Arc<ServerConfig>, input: &[u8], cuts: &[usize], reply: &[u8]) -> bool {
    let Ok(conn) = UnbufferedServerConnection::new(config) else {
        return false;
    };
    let shared = Shared::new(Conn::Server(conn));
    let mut out = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.sort_unstable();
    ends.push(input.len());
    let mut ready = false;
    for end in ends {
        if end <= at {
            continue;
        }
        let chunk = input[at..end].to_vec();
        at = end;
        match shared.take_in(chunk, &mut out) {
            Ok(Next::Ready) => ready = true,
            Ok(_) => {}
            Err(_) => {
                shared.alert(&mut out);
                break;
            }
        }
        let mut sink = Vec::with_capacity(512);
        while shared
            .take_plain(&mut crate::rawbuf::room(&mut sink))
            .is_some()
        {}
    }
    if ready && !shared.failed.get() {
        let _ = shared.process_pending(&mut out, Some(reply));
    }
    ready
}
