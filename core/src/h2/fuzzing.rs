//! Fuzz harnesses for both sides of HTTP/2: bytes from a peer into a connection's state and
//! its side's translation, with no runtime (nothing there waits). Whatever arrives, nothing
//! panics, and the bounds hold.

use std::time::Instant;

use super::block::Block;
use super::conn::{Config, Connection, Events, Failure, Role, Verdict};
use super::{client, server};
use crate::head::{Forwarded, RequestHead, ResponseHead};

/// Streams accepted by the server side, their heads read, their bodies taken.
#[derive(Default)]
struct Served {
    accepted: Vec<u32>,
    body: Vec<(u32, usize)>,
}

impl Events for Served {
    fn head(&mut self, id: u32, block: &Block) -> Verdict {
        let mut head = RequestHead::default();
        let mut buf = Vec::new();
        let (v, result) = server::request(block, &mut head, &mut buf);
        if result.is_ok() && matches!(v, Verdict::Accept { .. }) {
            // Every span of an accepted head is inside its bytes.
            for h in &head.headers {
                assert!(h.name.end as usize <= buf.len() && h.value.end as usize <= buf.len());
            }
            assert!(head.path.end as usize <= buf.len());
        }
        if let Verdict::Accept { .. } = v {
            self.accepted.push(id);
        }
        v
    }

    fn trailers(&mut self, _: u32, _: &Block) {}

    fn data(&mut self, id: u32, data: &[u8], _: bool) {
        self.body.push((id, data.len()));
    }

    fn failed(&mut self, _: u32, _: Failure) {}

    fn window(&mut self, _: u32) {}
}

/// The server side over `input` as a client's bytes, cut into reads at `cuts`. Each accepted
/// stream is answered and closed, its body read, as the forwarding path would.
pub fn server(input: &[u8], cuts: &[usize]) {
    let config = Config {
        role: Role::Server,
        max_streams: super::MAX_STREAMS,
        stream_window: 256 * 1024,
        connection_window: 1024 * 1024,
        max_head: 64 * 1024,
    };
    let now = Instant::now();
    let mut conn = Connection::new(config, now);
    let mut ev = Served::default();
    let mut buf = Vec::new();
    let (mut at, mut cut) = (0, 0);
    while at < input.len() && !conn.is_dead() {
        let step = cuts.get(cut).copied().unwrap_or(usize::MAX).max(1);
        cut += 1;
        let n = (input.len() - at).min(step);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        match conn.on_bytes(&buf, now, &mut ev) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(code) => conn.fail(Some(code)),
        }
        let mut answer = Vec::new();
        let ok = b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n";
        let mut resp = ResponseHead::default();
        if resp.parse(ok, 1024).is_ok() {
            server::answer_block(&resp, ok, Some(0), &mut answer, None);
        }
        for id in std::mem::take(&mut ev.accepted) {
            let _ = conn.send_head(id, &answer, true);
        }
        for (id, n) in std::mem::take(&mut ev.body) {
            conn.consumed(id, n as u32);
        }
        let ended: Vec<u32> = conn
            .streams()
            .filter(|s| s.recv_end || s.failure.is_some())
            .map(|s| s.id)
            .collect();
        for id in ended {
            conn.close(id, 0, now);
        }
        assert!(conn.stream_count() <= super::MAX_STREAMS as usize);
        assert!(conn.receive_window() <= 1024 * 1024);
        let mut out = Vec::new();
        conn.take_output(&mut out);
    }
}

/// Answers read by the client side.
#[derive(Default)]
struct Answers {
    body: Vec<(u32, usize)>,
}

impl Events for Answers {
    fn head(&mut self, _: u32, block: &Block) -> Verdict {
        let mut resp = ResponseHead::default();
        let (v, _) = client::answer(block, false, &mut resp);
        for h in &resp.headers {
            assert!(h.value.end as usize <= block.bytes.len());
        }
        v
    }

    fn trailers(&mut self, _: u32, _: &Block) {}

    fn data(&mut self, id: u32, data: &[u8], _: bool) {
        self.body.push((id, data.len()));
    }

    fn failed(&mut self, _: u32, _: Failure) {}

    fn window(&mut self, _: u32) {}
}

/// The client side over `input` as an upstream's bytes, with `streams` requests open (at most
/// 8). Readers take what comes, as the forwarding path would.
pub fn client(input: &[u8], streams: u8) {
    let config = Config {
        role: Role::Client,
        max_streams: 100,
        stream_window: 1024 * 1024,
        connection_window: 4 * 1024 * 1024,
        max_head: 256 * 1024,
    };
    let now = Instant::now();
    let mut conn = Connection::new(config, now);
    let raw = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut req = RequestHead::default();
    if req.parse(raw, 1024).is_ok() {
        let fwd = Forwarded {
            client_ip: b"10.0.0.1",
            proto: b"http",
            fallback_host: b"a",
            deadline: None,
            trace: None,
            identity: None,
            edits: None,
            target: None,
            authority: None,
        };
        let mut block = Vec::new();
        client::request_block(&req, raw, &fwd, false, false, &mut block);
        for _ in 0..streams.min(8) {
            conn.open(&block, true);
        }
    }
    let mut ev = Answers::default();
    let mut at = 0;
    while at < input.len() && !conn.is_dead() {
        match conn.on_bytes(&input[at..], now, &mut ev) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(code) => conn.fail(Some(code)),
        }
        for (id, n) in std::mem::take(&mut ev.body) {
            conn.consumed(id, n as u32);
        }
        assert!(conn.receive_window() <= 4 * 1024 * 1024);
        let mut out = Vec::new();
        conn.take_output(&mut out);
    }
}
