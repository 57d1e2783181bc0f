//! Tunnels: a CONNECT, or an upgrade the upstream agreed to (`101`). Bytes flow both ways
//! until both sides close; the whole tunnel is one request in the access log.

use std::time::Instant;

use monoio::io::AsyncWriteRentExt;

use super::super::body::HeadIn;
use super::super::client::Client;
use super::{Done, Exchange};
use crate::endpoint::{Endpoint, UpConn};
use crate::error::Error;
use crate::head::ResponseHead;
use crate::http1::encode;
use crate::metrics::Outcome;
use crate::tcp::{Moved, tunnel};

impl Exchange<'_> {
    /// CONNECT: a new connection to an endpoint of the route's cluster, `200` to the client,
    /// then bytes both ways (the target's port is not used: the route decides where a tunnel
    /// goes, so the proxy never opens one to an address a client names).
    pub(super) async fn connect_tunnel(&self, c: &mut Client) -> Result<Done, Error> {
        let w = self.worker;
        let started = Instant::now();
        // A CONNECT has no body: whatever happens, the connection may take the next request.
        self.note.body_consumed.set(true);
        let (ep, up, _) = self.connect_retrying(true, self.deadline()).await?;
        let _in_flight = ep.begin(started);
        let now = Instant::now();
        let rtt = now.saturating_duration_since(started);
        self.note.upstream.set(Some(rtt));
        self.book(&ep, Outcome::Success, now, rtt);
        let mut out = w.bufs.get();
        out.extend_from_slice(encode::CONNECT_ESTABLISHED);
        self.open_tunnel(c, up, out).await;
        Ok(Done {
            status: 200,
            client_keep_alive: false,
        })
    }

    /// The upstream agreed to the client's upgrade: its 101 goes to the client, then bytes
    /// flow both ways until both sides close. The whole tunnel is one request in the access
    /// log, written when it ends.
    pub(super) async fn switch(
        &self,
        c: &mut Client,
        up: UpConn,
        head: HeadIn,
        resp: &ResponseHead,
        ep: &Endpoint,
        sent_at: Instant,
    ) -> Result<Done, Error> {
        let w = self.worker;
        let rtt = head.at.saturating_duration_since(sent_at);
        self.note.upstream.set(Some(rtt));
        self.book(ep, Outcome::Success, head.at, rtt);
        let mut out = w.bufs.get();
        encode::switching_head(&mut out, &head.ubuf, resp);
        // What the upstream sent after its head already speaks the new protocol.
        out.extend_from_slice(&head.ubuf[head.head_len..]);
        w.put_buf(head.ubuf);
        self.open_tunnel(c, up, out).await;
        Ok(Done {
            status: 101,
            client_keep_alive: false,
        })
    }

    /// Sends `first` to the client, then what the client sent past its request head to the
    /// upstream, then copies both ways until both sides close, one fails, or the connection
    /// stays idle for the listener's idle timeout. The client connection ends with it.
    async fn open_tunnel(&self, c: &mut Client, up: UpConn, first: Vec<u8>) {
        let w = self.worker;
        let progress = &self.note.progress;
        progress.started.set(true);
        let (ok, out) = c.write(first).await;
        if ok {
            progress.bytes_out.set(out.len() as u64);
        }
        w.put_buf(out);
        let (mut ustream, _count) = up.into_parts();
        let early = c.data().get(self.req.head_len..).unwrap_or_default();
        let early_len = early.len();
        let mut sent = ok;
        if ok && early_len > 0 {
            let mut buf = w.bufs.get();
            buf.extend_from_slice(early);
            let (r, buf) = ustream.write_all(buf).await;
            w.put_buf(buf);
            sent = r.is_ok();
        }
        // The client buffer is spent: the connection is the tunnel's from here on.
        c.release(w);
        let Some(stream) = c.stream.take().filter(|_| sent) else {
            return;
        };
        let moved = Moved::default();
        let idle = self.limits.idle_timeout;
        let (mut cr, mut cw) = stream.into_split();
        let (mut ur, mut uw) = ustream.into_split();
        let client = (&mut cr, &mut cw);
        let _ = tunnel(w, client, (&mut ur, &mut uw), idle, Some(&moved)).await;
        // Kept for the access log (the client's identity); nothing more is read or written.
        c.stream = cr.reunite(cw);
        self.note.bytes_in.set(early_len as u64 + moved.up.get());
        progress
            .bytes_out
            .set(progress.bytes_out.get() + moved.down.get());
    }
}
