//! The connection's protocol rules, both sides, driven by frames as a peer would send them.
//! The side's translation runs as in service (`server.rs`, `client.rs`); what it makes of a
//! stream is recorded.

mod client_side;
mod server_side;

use std::collections::HashMap;

use super::*;
use crate::h2::body::Inbox;
use crate::h2::frame::{Code, MAX_FRAME, be32, frame_head};
use crate::h2::{MAX_STREAMS, client, hpack, server};
use crate::head::{Forwarded, Framing, RequestHead, ResponseHead};

/// A request the server side accepted.
struct Accepted {
    head: RequestHead,
    buf: Vec<u8>,
}

impl Accepted {
    /// The head as it would go upstream over HTTP/1.1, without the fields the proxy adds.
    fn upstream(&self) -> String {
        let fwd = Forwarded {
            client_ip: b"",
            proto: b"",
            fallback_host: b"",
            deadline: None,
            trace: None,
            identity: None,
            edits: None,
            target: None,
            authority: None,
        };
        let mut out = Vec::new();
        crate::http1::encode::request_head(&mut out, &self.buf, &self.head, &fwd);
        String::from_utf8(out)
            .unwrap()
            .replace("x-forwarded-for: \r\n", "")
            .replace("x-forwarded-proto: \r\n", "")
    }
}

/// What the side made of the streams.
#[derive(Default)]
struct Recorded {
    client: bool,
    accepted: Vec<Accepted>,
    answers: HashMap<u32, ResponseHead>,
    inbox: HashMap<u32, Inbox>,
    failed: Vec<(u32, Failure)>,
}

impl Events for Recorded {
    fn head(&mut self, id: u32, block: &Block) -> Verdict {
        let mut inbox = Inbox::default();
        let v = if self.client {
            let mut resp = ResponseHead::default();
            let (v, body) = client::answer(block, false, &mut resp);
            inbox.bytes.extend_from_slice(&block.bytes);
            inbox.chunked = body.chunked;
            if let Verdict::Accept { .. } = v {
                self.answers.insert(id, resp);
            }
            v
        } else {
            let mut head = RequestHead::default();
            let mut buf = Vec::new();
            let (v, _) = server::request(block, &mut head, &mut buf);
            inbox.chunked = head.framing == Framing::Chunked;
            if let Verdict::Accept { .. } = v {
                self.accepted.push(Accepted { head, buf });
            }
            v
        };
        if let Verdict::Accept { .. } = v {
            self.inbox.insert(id, inbox);
        }
        v
    }

    fn trailers(&mut self, id: u32, block: &Block) {
        if let Some(i) = self.inbox.get_mut(&id) {
            i.trailers(block);
        }
    }

    fn data(&mut self, id: u32, data: &[u8], end: bool) {
        if let Some(i) = self.inbox.get_mut(&id) {
            i.data(data, end);
        }
    }

    fn failed(&mut self, id: u32, f: Failure) {
        self.failed.push((id, f));
    }

    fn window(&mut self, _: u32) {}
}

/// A connection and its side.
struct Peer {
    conn: Connection,
    ev: Recorded,
    accepted: Vec<Accepted>,
}

impl Peer {
    fn on_bytes(&mut self, bytes: &[u8]) -> Result<usize, Code> {
        let r = self.conn.on_bytes(bytes, Instant::now(), &mut self.ev);
        self.accepted.append(&mut self.ev.accepted);
        r
    }

    /// The side is done with a stream.
    fn close(&mut self, id: u32) {
        self.conn.close(id, 0, Instant::now());
        self.ev.inbox.remove(&id);
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.conn.find_mut(id)
    }

    /// What a stream's reader would read, as text.
    fn inbox(&self, id: u32) -> String {
        self.ev
            .inbox
            .get(&id)
            .map(|i| String::from_utf8_lossy(&i.bytes).into_owned())
            .unwrap_or_default()
    }
}

fn frame(ty: u8, flags: u8, id: u32, p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_head(&mut out, p.len(), ty, flags, id);
    out.extend_from_slice(p);
    out
}

fn server_config(max: usize) -> Config {
    Config {
        role: Role::Server,
        max_streams: MAX_STREAMS,
        stream_window: 256 * 1024,
        connection_window: 1024 * 1024,
        max_head: max,
    }
}

/// A server connection past the preface and the client's SETTINGS, heads held to `max`.
fn open(max: usize) -> Peer {
    let mut st = Peer {
        conn: Connection::new(server_config(max), Instant::now()),
        ev: Recorded::default(),
        accepted: Vec::new(),
    };
    let mut input = crate::h2::PREFACE.to_vec();
    input.extend(frame(frame::SETTINGS, 0, 0, &[]));
    assert_eq!(st.on_bytes(&input), Ok(input.len()));
    st.conn.out.clear();
    st
}

/// A header block of literal fields, written as given (no lowercasing).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0);
        hpack::put_int(&mut b, 0, 7, n.len());
        b.extend_from_slice(n.as_bytes());
        hpack::put_int(&mut b, 0, 7, v.len());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "a.test"),
    (":path", "/"),
];

fn headers(st: &mut Peer, id: u32, fields: &[(&str, &str)], end: bool) -> Result<(), Code> {
    let flags = frame::END_HEADERS | if end { frame::END_STREAM } else { 0 };
    let f = frame(frame::HEADERS, flags, id, &block(fields));
    st.on_bytes(&f).map(|n| assert_eq!(n, f.len()))
}

/// The frames queued for the peer: type, stream, and payload.
fn sent(out: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= out.len() {
        let len = u32::from_be_bytes([0, out[at], out[at + 1], out[at + 2]]) as usize;
        let id = be32(&out[at + 5..at + 9]);
        frames.push((out[at + 3], id, out[at + 9..at + 9 + len].to_vec()));
        at += 9 + len;
    }
    frames
}

fn resets(st: &Peer) -> Vec<(u32, Code)> {
    sent(&st.conn.out)
        .into_iter()
        .filter(|f| f.0 == frame::RST_STREAM)
        .map(|(_, id, p)| (id, Code(be32(&p))))
        .collect()
}

/// A header block as it decodes: (name, value) pairs.
fn decode(block: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    Decoder::new(TABLE_SIZE)
        .decode(block, |n, v| {
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            fields.push((s(n), s(v)));
        })
        .unwrap();
    fields
}
