//! The receiving half of the connection state: bytes into frames, frames into stream state and
//! events for the side, with the checks RFC 9113 asks of each frame (sections 5 and 6).

use std::time::Instant;

use super::{Connection, Events, Failure, OUT_CAP, Role, Stream, Verdict};
use crate::h2::block::Kind;
use crate::h2::frame::{self, Code, MAX_FRAME, MAX_ID, be32, next_frame, on_ping, unpad};
use crate::metrics::H2Event;

impl Connection {
    /// Handles the preface and every whole frame at the start of `buf`, read at `now`; how many
    /// bytes that was. An error is the connection's: its code for GOAWAY ([`Connection::fail`]).
    pub fn on_bytes(
        &mut self,
        buf: &[u8],
        now: Instant,
        ev: &mut impl Events,
    ) -> Result<usize, Code> {
        let mut at = 0;
        if !self.preface {
            let n = buf.len().min(crate::h2::PREFACE.len());
            if buf[..n] != crate::h2::PREFACE[..n] {
                return Err(Code::PROTOCOL_ERROR);
            }
            if n < crate::h2::PREFACE.len() {
                return Ok(0);
            }
            self.preface = true;
            at = n;
        }
        while let Some((ty, flags, id, p)) = next_frame(&buf[at..])? {
            self.on_frame(ty, flags, id, p, now, ev)?;
            at += 9 + p.len();
            if self.out.len() > OUT_CAP {
                return Err(Code::ENHANCE_YOUR_CALM);
            }
            if self.dead {
                break;
            }
        }
        Ok(at)
    }

    fn on_frame(
        &mut self,
        ty: u8,
        flags: u8,
        id: u32,
        p: &[u8],
        now: Instant,
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        if !self.settled && ty != frame::SETTINGS {
            return Err(Code::PROTOCOL_ERROR);
        }
        if self.assembly.stream != 0 && ty != frame::CONTINUATION {
            // A header block is one run of frames (RFC 9113 section 6.10).
            return Err(Code::PROTOCOL_ERROR);
        }
        match ty {
            frame::DATA => self.on_data(flags, id, p, ev),
            frame::HEADERS => self.on_headers(flags, id, p, ev),
            frame::CONTINUATION => {
                if self.assembly.stream == 0 || id != self.assembly.stream {
                    return Err(Code::PROTOCOL_ERROR);
                }
                self.add_fragment(p)?;
                if flags & frame::END_HEADERS != 0 {
                    self.end_block(ev)?;
                }
                Ok(())
            }
            frame::PRIORITY => self.on_priority(id, p, ev),
            frame::RST_STREAM => self.on_reset(id, p, now, ev),
            frame::SETTINGS => self.on_settings(flags, id, p, ev),
            frame::PUSH_PROMISE => Err(Code::PROTOCOL_ERROR),
            frame::PING => on_ping(flags, id, p, &mut self.out).map(|_| ()),
            frame::GOAWAY => self.on_goaway(id, p, ev),
            frame::WINDOW_UPDATE => self.on_window_update(id, p, now, ev),
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    /// A stream id not opened yet: by the peer (server), or by us (client; a server opens
    /// none, so an even id is never open).
    fn idle(&self, id: u32) -> bool {
        match self.config.role {
            Role::Server => id > self.peer_last,
            Role::Client => id >= self.next_id || id % 2 == 0,
        }
    }

    /// A frame of type `ty` on stream `id`, which is closed or which the peer reset (RFC 9113
    /// section 5.1): ignored on a stream we ended early (the peer may not have heard yet); a
    /// stream error STREAM_CLOSED on one the peer reset; on one both sides ended, a connection
    /// error STREAM_CLOSED, but for the WINDOW_UPDATE or RST_STREAM that may cross our end of
    /// it. HEADERS on either opens a used stream id again (or sends trailers after a reset): a
    /// connection error. PRIORITY is allowed on any stream.
    fn on_closed(&mut self, id: u32, ty: u8, ev: &mut impl Events) -> Result<(), Code> {
        if ty == frame::PRIORITY || self.cut.contains(id) {
            return Ok(());
        }
        let reset_by_peer = self.peer_reset.contains(id)
            || self
                .stream(id)
                .is_some_and(|s| matches!(s.failure, Some(Failure::Reset(_))));
        match ty {
            // Never a reset in answer to a reset (RFC 9113 section 5.4.2).
            frame::RST_STREAM => Ok(()),
            frame::HEADERS => Err(Code::STREAM_CLOSED),
            _ if reset_by_peer => self.refuse(id, Code::STREAM_CLOSED, ev),
            frame::WINDOW_UPDATE => Ok(()),
            _ => Err(Code::STREAM_CLOSED),
        }
    }

    fn on_priority(&mut self, id: u32, p: &[u8], ev: &mut impl Events) -> Result<(), Code> {
        if id == 0 {
            return Err(Code::PROTOCOL_ERROR);
        }
        // A stream error on a stream not yet open cannot be a reset (RFC 9113 section 6.4):
        // it is the connection's.
        let error = if p.len() != 5 {
            Code::FRAME_SIZE_ERROR
        } else if be32(p) & MAX_ID == id {
            Code::PROTOCOL_ERROR
        } else {
            return Ok(());
        };
        if self.idle(id) {
            return Err(error);
        }
        self.refuse(id, error, ev)
    }

    fn on_reset(
        &mut self,
        id: u32,
        p: &[u8],
        now: Instant,
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        if id == 0 || self.idle(id) {
            return Err(Code::PROTOCOL_ERROR);
        }
        if p.len() != 4 {
            return Err(Code::FRAME_SIZE_ERROR);
        }
        let server = self.role() == Role::Server;
        let Some(s) = self.find_mut(id) else {
            return self.on_closed(id, frame::RST_STREAM, ev);
        };
        if matches!(s.failure, Some(Failure::Reset(_))) {
            return Ok(());
        }
        let unanswered = !s.sent_end && s.failure.is_none();
        // The peer is done with the stream either way: nothing to reset back.
        s.sent_end = true;
        let f = Failure::Reset(Code(be32(p)));
        s.fail(f);
        self.peer_reset.add(id);
        ev.failed(id, f);
        if unanswered && server {
            ev.note(H2Event::ClientReset);
            if self.resets.take(now).is_err() {
                return Err(Code::ENHANCE_YOUR_CALM);
            }
        }
        Ok(())
    }

    fn on_settings(
        &mut self,
        flags: u8,
        id: u32,
        p: &[u8],
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        let streams = &mut self.streams;
        let mut grew = false;
        let move_windows = |delta: i64| {
            for s in streams.iter_mut() {
                s.send_window += delta;
                if s.send_window > MAX_ID as i64 {
                    return Err(Code::FLOW_CONTROL_ERROR);
                }
            }
            grew |= delta > 0;
            Ok(())
        };
        let (out, peer) = (&mut self.out, &mut self.peer);
        let applied = frame::on_settings(flags, id, p, out, peer, move_windows)?;
        if grew {
            for s in &self.streams {
                ev.window(s.id);
            }
        }
        if applied && !self.settled {
            self.settled = true;
            ev.note(H2Event::Connection);
        }
        Ok(())
    }

    fn on_goaway(&mut self, id: u32, p: &[u8], ev: &mut impl Events) -> Result<(), Code> {
        if id != 0 {
            return Err(Code::PROTOCOL_ERROR);
        }
        if p.len() < 8 {
            return Err(Code::FRAME_SIZE_ERROR);
        }
        let last = be32(p) & MAX_ID;
        let last = self.goaway_received.map_or(last, |l| l.min(last));
        self.goaway_received = Some(last);
        if self.role() == Role::Client {
            // Our requests past it were not processed: they may go again elsewhere.
            for s in self.streams.iter_mut().filter(|s| s.id > last) {
                s.sent_end = true;
                let f = Failure::Reset(Code::REFUSED_STREAM);
                s.fail(f);
                ev.failed(s.id, f);
            }
        }
        Ok(())
    }

    fn on_window_update(
        &mut self,
        id: u32,
        p: &[u8],
        now: Instant,
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        if p.len() != 4 {
            return Err(Code::FRAME_SIZE_ERROR);
        }
        self.progress = now;
        let n = (be32(p) & MAX_ID) as i64;
        if id == 0 {
            if n == 0 {
                return Err(Code::PROTOCOL_ERROR);
            }
            self.send_window += n;
            if self.send_window > MAX_ID as i64 {
                return Err(Code::FLOW_CONTROL_ERROR);
            }
            ev.window(0);
            return Ok(());
        }
        if self.idle(id) {
            return Err(Code::PROTOCOL_ERROR);
        }
        if n == 0 {
            return self.refuse(id, Code::PROTOCOL_ERROR, ev);
        }
        let Some(s) = self
            .find_mut(id)
            .filter(|s| !matches!(s.failure, Some(Failure::Reset(_))))
        else {
            return self.on_closed(id, frame::WINDOW_UPDATE, ev);
        };
        s.send_window += n;
        if s.send_window > MAX_ID as i64 {
            return self.refuse(id, Code::FLOW_CONTROL_ERROR, ev);
        }
        ev.window(id);
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, p: &[u8], ev: &mut impl Events) -> Result<(), Code> {
        if id == 0 || self.idle(id) {
            return Err(Code::PROTOCOL_ERROR);
        }
        let n = p.len() as i64;
        if n > self.recv_window {
            return Err(Code::FLOW_CONTROL_ERROR);
        }
        self.recv_window -= n;
        let (data, _) = unpad(flags, p, false)?;
        let whole = p.len() as u32;
        let Some(i) = self.position(id) else {
            // A stream we are done with: its window is the connection's again at once.
            self.credit_connection(whole);
            return self.on_closed(id, frame::DATA, ev);
        };
        let s = &mut self.streams[i];
        if !s.head || s.recv_end || s.failure.is_some() {
            let (head, failure) = (s.head, s.failure);
            self.credit_connection(whole);
            return match failure {
                // DATA before the head is malformed; after the end, the stream is half-closed
                // (RFC 9113 section 5.1).
                None if !head => self.refuse(id, Code::PROTOCOL_ERROR, ev),
                None => self.refuse(id, Code::STREAM_CLOSED, ev),
                Some(Failure::Reset(_)) => self.on_closed(id, frame::DATA, ev),
                Some(_) => Ok(()),
            };
        }
        if n > s.recv_window {
            self.credit_connection(whole);
            return self.refuse(id, Code::FLOW_CONTROL_ERROR, ev);
        }
        s.recv_window -= n;
        let end = flags & frame::END_STREAM != 0;
        let fits = match s.left.as_mut() {
            Some(left) if data.len() as u64 > *left => false,
            Some(left) => {
                *left -= data.len() as u64;
                !end || *left == 0
            }
            None => true,
        };
        if !fits {
            // More or less body than the declared length (RFC 9113 section 8.1.1).
            self.credit_connection(whole);
            return self.refuse(id, Code::PROTOCOL_ERROR, ev);
        }
        s.recv_end = end;
        ev.data(id, data, end);
        let padding = (p.len() - data.len()) as u32;
        if padding > 0 {
            self.consumed(id, padding);
        }
        Ok(())
    }

    fn on_headers(
        &mut self,
        flags: u8,
        id: u32,
        p: &[u8],
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        let opens_wrongly = match self.config.role {
            // A client opens odd streams; a server opens none to us.
            Role::Server => id % 2 == 0,
            Role::Client => self.idle(id),
        };
        if id == 0 || opens_wrongly {
            return Err(Code::PROTOCOL_ERROR);
        }
        let (fragment, _) = unpad(flags, p, true)?;
        // Priority fields sit between the pad length and the block; unpad has checked them.
        let at = if flags & frame::PADDED != 0 { 1 } else { 0 };
        let a = &mut self.assembly;
        a.self_dependent = flags & frame::PRIORITY_FLAG != 0 && be32(&p[at..at + 4]) & MAX_ID == id;
        a.stream = id;
        a.end_stream = flags & frame::END_STREAM != 0;
        a.bytes.clear();
        a.frames = 0;
        self.add_fragment(fragment)?;
        if flags & frame::END_HEADERS != 0 {
            self.end_block(ev)?;
        }
        Ok(())
    }

    /// Collects a header block's fragment. A block is held to the head limit and a frame's
    /// slack, in few frames: a CONTINUATION flood ends the connection.
    fn add_fragment(&mut self, p: &[u8]) -> Result<(), Code> {
        let limit = self.config.max_head + MAX_FRAME;
        let a = &mut self.assembly;
        a.frames += 1;
        if a.bytes.len() + p.len() > limit || a.frames > 16 + limit / 1024 {
            return Err(Code::ENHANCE_YOUR_CALM);
        }
        a.bytes.extend_from_slice(p);
        Ok(())
    }

    /// A whole header block has come: a head, an interim answer, or trailers.
    fn end_block(&mut self, ev: &mut impl Events) -> Result<(), Code> {
        let id = std::mem::take(&mut self.assembly.stream);
        let end = self.assembly.end_stream;
        let raw = std::mem::take(&mut self.assembly.bytes);
        let r = self.on_block(id, end, &raw, ev);
        self.assembly.bytes = raw;
        r
    }

    /// Decodes a block for no stream: the table must stay in step.
    fn skip_block(&mut self, raw: &[u8]) -> Result<(), Code> {
        let r = self.decoder.decode(raw, |_, _| {});
        r.map_err(|_| self.decoder.error_code())
    }

    /// Decodes a block as `kind` into `self.block`.
    fn decode(&mut self, raw: &[u8], kind: Kind, end: bool) -> Result<(), Code> {
        let max = self.config.max_head;
        let r = self.block.decode(&mut self.decoder, raw, kind, max);
        r.map_err(|_| self.decoder.error_code())?;
        self.block.end_stream = end;
        Ok(())
    }

    fn on_block(
        &mut self,
        id: u32,
        end: bool,
        raw: &[u8],
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        if self.assembly.self_dependent {
            self.skip_block(raw)?;
            if self.role() == Role::Server {
                self.peer_last = self.peer_last.max(id);
            }
            return self.refuse(id, Code::PROTOCOL_ERROR, ev);
        }
        let Some(i) = self.position(id) else {
            if self.role() == Role::Server {
                return self.on_new_stream(id, end, raw, ev);
            }
            self.skip_block(raw)?;
            return self.on_closed(id, frame::HEADERS, ev);
        };
        let s = &self.streams[i];
        if s.recv_end || s.failure.is_some() {
            let failure = s.failure;
            self.skip_block(raw)?;
            return match failure {
                None => self.refuse(id, Code::STREAM_CLOSED, ev),
                Some(Failure::Reset(_)) => self.on_closed(id, frame::HEADERS, ev),
                Some(_) => Ok(()),
            };
        }
        if s.head {
            return self.on_trailers(i, end, raw, ev);
        }
        // An answer's head (a stream we opened).
        self.decode(raw, Kind::Answer, end)?;
        let verdict = if self.block.malformed {
            Verdict::Malformed
        } else {
            ev.head(id, &self.block)
        };
        match verdict {
            Verdict::Accept { length } if !(end && length.is_some_and(|n| n > 0)) => {
                let s = &mut self.streams[i];
                s.head = true;
                s.left = length;
                s.recv_end = end;
                Ok(())
            }
            Verdict::Interim if !end => Ok(()),
            _ => self.refuse(id, Code::PROTOCOL_ERROR, ev),
        }
    }

    /// Trailers: they end the stream, after a body of the declared length.
    fn on_trailers(
        &mut self,
        i: usize,
        end: bool,
        raw: &[u8],
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        let id = self.streams[i].id;
        self.decode(raw, Kind::Trailers, end)?;
        let short = self.streams[i].left.is_some_and(|l| l > 0);
        if self.block.malformed || !end || short {
            return self.refuse(id, Code::PROTOCOL_ERROR, ev);
        }
        self.streams[i].recv_end = true;
        ev.trailers(id, &self.block);
        Ok(())
    }

    /// A header block opening a stream (server).
    fn on_new_stream(
        &mut self,
        id: u32,
        end: bool,
        raw: &[u8],
        ev: &mut impl Events,
    ) -> Result<(), Code> {
        if self.goaway_sent.is_some_and(|last| id > last) {
            // Past our GOAWAY: ignored, the client may try it elsewhere (RFC 9113 section 6.8).
            self.peer_last = self.peer_last.max(id);
            return self.skip_block(raw);
        }
        if id <= self.peer_last {
            self.skip_block(raw)?;
            return self.on_closed(id, frame::HEADERS, ev);
        }
        self.peer_last = id;
        // Streams the client reset may still be here, their side not yet done: they do not
        // count.
        let open = self.streams.iter().filter(|s| s.failure.is_none()).count();
        if open >= self.config.max_streams as usize {
            // Not counted as an abuse: the client may not have heard of the limit yet.
            self.skip_block(raw)?;
            self.reset(id, Code::REFUSED_STREAM);
            return Ok(());
        }
        self.decode(raw, Kind::Request, end)?;
        let verdict = if self.block.malformed {
            Verdict::Malformed
        } else {
            ev.head(id, &self.block)
        };
        match verdict {
            Verdict::Accept { length } => {
                let mut s = Stream::new(id, self.peer.window, self.config.stream_window);
                s.head = true;
                s.recv_end = end;
                s.left = length;
                self.streams.push(s);
                Ok(())
            }
            Verdict::Answer(status) => self.answer_now(id, status, end),
            Verdict::Interim | Verdict::Malformed => self.refuse(id, Code::PROTOCOL_ERROR, ev),
        }
    }
}
