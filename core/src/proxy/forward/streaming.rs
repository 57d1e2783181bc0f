//! A request whose body streams (too large to keep, or sent before the client has all of it):
//! full duplex on a connection known to be alive, so that an upstream may answer before it has
//! read the whole body. Only a connection that could not be made is tried again.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::super::body::{self, DuplexEnd, Until};
use super::super::client::Client;
use super::{Done, Exchange, RetryGuard, outcome_of_kind};
use crate::endpoint::{Endpoint, UpConn};
use crate::error::{Error, ErrorKind, Retry, Side};
use crate::head::ResponseHead;
use crate::metrics::Outcome;
use crate::retry::{Next, Tried, after_failure};

impl Exchange<'_> {
    /// The body streams: full duplex on a connection known to be alive. Only a failed connect
    /// is retried (nothing of the body was read yet).
    pub(super) async fn send_streaming(
        &self,
        c: &mut Client,
        resp: &mut ResponseHead,
    ) -> Result<Done, Error> {
        let w = self.worker;
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut fresh = false;
        let (ep, up) = loop {
            let (ep, mut up, reused) = self.connect_retrying(fresh, deadline).await?;
            let mut out = w.bufs.get();
            // The answer's timeout runs from the end of a streamed body: only a deadline the
            // caller set is passed on.
            let caller = self.req.deadline.map(|d| self.started + d);
            let now = Instant::now();
            let mut sent = self.send_head(c, &mut up.stream, &ep, caller, now, &mut out);
            if sent.is_ok() && !out.is_empty() {
                let (r, o) = up.stream.write_all(out).await;
                out = o;
                if r.is_err() {
                    sent = Err(Error::upstream(ErrorKind::UpstreamReset, Retry::NotWritten));
                }
            }
            w.put_buf(out);
            let Err(e) = sent else {
                break (ep, up);
            };
            let facts = Tried {
                reused,
                fresh,
                idempotent: false,
            };
            match after_failure(&e, facts) {
                // The upstream never saw it: a fresh connection.
                Next::Resend => fresh = true,
                _ => return Err(e),
            }
        };
        c.start += self.req.head_len;
        self.note.bytes_in.set(self.req.head_len as u64);
        let _in_flight = ep.begin(Instant::now());
        self.continue_if_expected(c).await?;
        let sent_at = Instant::now();
        let Some(stream) = c.stream.take() else {
            return Err(Error::downstream(ErrorKind::ClientClosed));
        };
        let (mut cr, mut cw) = stream.into_split();
        let (ustream, count) = up.into_parts();
        let (mut ur, mut uw) = ustream.into_split();
        let progress = &self.note.progress;
        let end = {
            let pump = body::pump(
                w,
                &mut cr,
                &mut c.buf,
                &mut c.start,
                &mut uw,
                self.req.framing,
                self.limits.max_request_body,
                self.limits.idle_timeout,
                &progress.body_in,
            );
            let relay = body::relay(
                w,
                &mut ur,
                &mut cw,
                resp,
                self.client_side(),
                Until::Never,
                progress,
            );
            body::duplex(pump, relay, &progress.started, self.timeout).await
        };
        c.stream = cr.reunite(cw);
        let up = ur.reunite(uw).map(|s| UpConn::from_parts(s, count));
        let n = self.req.head_len as u64 + progress.body_in.get();
        self.note.bytes_in.set(n);
        match end {
            DuplexEnd::Relayed { relay, pumped } => {
                self.note.body_consumed.set(pumped);
                let mut r = self.finish(&ep, relay, up.filter(|_| pumped), sent_at, resp);
                if let Ok(done) = &mut r {
                    // The client's body was not read to its end: the connection cannot go on.
                    done.client_keep_alive &= pumped;
                }
                r
            }
            DuplexEnd::PumpFailed(e) => {
                if e.side == Side::Upstream {
                    self.book(&ep, Outcome::Reset, Instant::now(), sent_at.elapsed());
                }
                Err(e)
            }
            DuplexEnd::TimedOut => {
                self.book(&ep, Outcome::Timeout, Instant::now(), sent_at.elapsed());
                self.note.body_consumed.set(true);
                Err(Error::upstream(ErrorKind::Timeout, Retry::Never))
            }
        }
    }

    /// An endpoint and a connection to it: pooled (and seen alive) unless `fresh`, else new.
    /// A connection that cannot be made is tried on another endpoint when the route's retry
    /// policy and budget allow.
    pub(super) async fn connect_retrying(
        &self,
        mut fresh: bool,
        deadline: Instant,
    ) -> Result<(Rc<Endpoint>, UpConn, bool), Error> {
        let w = self.worker;
        let mut avoid: Option<Rc<Endpoint>> = None;
        let mut retries = self.note.retries.get();
        let mut guard = RetryGuard(None);
        loop {
            let now = Instant::now();
            let Some(ep) = self.cv.pick(w.draw(), self.cluster, now, avoid.as_ref()) else {
                return Err(Error::internal(ErrorKind::NoEndpoint));
            };
            self.note.endpoint.set(Some(ep.addr));
            self.note.retries.set(retries);
            let (error, started) = match self.connection(&ep, fresh, deadline, true).await {
                Ok((up, reused)) => return Ok((ep, up, reused)),
                Err(failed) => failed,
            };
            if error.retry != Retry::NotConnected {
                return Err(error);
            }
            if error.side == Side::Upstream {
                // Not a wait in the endpoint's line, which says nothing against it.
                let outcome = outcome_of_kind(error.kind);
                self.book(&ep, outcome, Instant::now(), started.elapsed());
            }
            let facts = Tried {
                reused: false,
                fresh,
                idempotent: self.idempotent(),
            };
            let again = match after_failure(&error, facts) {
                Next::AskPolicy(f) => self.should_retry(f, retries, &mut guard),
                _ => false,
            };
            if !again {
                return Err(error);
            }
            retries += 1;
            self.backoff_and_count(retries).await;
            avoid = Some(ep);
            fresh = false;
        }
    }
}
