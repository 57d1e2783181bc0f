//! The connection's protocol rules, both sides, driven by frames as a peer would send them.
//! The side's translation runs as in service (`server.rs`, `client.rs`); what it makes of a
//! stream is recorded.

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

#[test]
fn a_request_becomes_an_http1_head_and_its_body_follows_chunked() {
    let mut st = open(64 * 1024);
    let fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.example"),
        (":path", "/v1/x?q=1"),
        ("cookie", "a=1"),
        ("x-id", "7"),
        ("cookie", "b=2"),
        ("host", "ignored.example"),
        ("te", "trailers"),
        ("ringmesh-original-protocol", "HTTP/1.1"),
    ];
    headers(&mut st, 1, &fields, false).unwrap();
    let a = st.accepted.pop().unwrap();
    assert_eq!(
        a.upstream(),
        "POST /v1/x?q=1 HTTP/1.1\r\nhost: api.example\r\nx-id: 7\r\ncookie: a=1; b=2\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    st.on_bytes(&frame(frame::DATA, 0, 1, b"hello")).unwrap();
    let trailers = block(&[("grpc-status", "0")]);
    let f = frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &trailers,
    );
    st.on_bytes(&f).unwrap();
    assert!(st.stream(1).unwrap().recv_end);
    assert_eq!(st.inbox(1), "5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
    assert!(resets(&st).is_empty());
}

#[test]
fn a_request_with_a_length_keeps_it_and_one_without_a_body_has_none() {
    let mut st = open(64 * 1024);
    let mut fields = GET.to_vec();
    fields[0] = (":method", "PUT");
    fields.push(("content-length", "3"));
    headers(&mut st, 1, &fields, false).unwrap();
    let head = st.accepted.pop().unwrap().upstream();
    assert!(head.ends_with("content-length: 3\r\n\r\n"), "{head}");
    // More body than declared resets the stream.
    st.on_bytes(&frame(frame::DATA, frame::END_STREAM, 1, b"four"))
        .unwrap();
    assert_eq!(resets(&st), [(1, Code::PROTOCOL_ERROR)]);
    headers(&mut st, 3, &GET, true).unwrap();
    let head = st.accepted.pop().unwrap().upstream();
    assert_eq!(head, "GET / HTTP/1.1\r\nhost: a.test\r\n\r\n");
}

#[test]
fn malformed_requests_are_reset_and_never_served() {
    let mut st = open(64 * 1024);
    let with = |f: (&'static str, &'static str)| {
        let mut v = GET.to_vec();
        v.push(f);
        v
    };
    let without = |name: &str| GET.iter().copied().filter(|f| f.0 != name).collect();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        with(("X-Upper", "1")),
        with(("connection", "close")),
        with(("transfer-encoding", "chunked")),
        with(("te", "gzip")),
        with(("x-a", "a\r\nx-b: b")),
        with(("x-a", "\u{1}")),
        with((":path", "/again")),
        with((":protocol", "websocket")),
        with(("content-length", "5")),
        with(("content-length", "x")),
        without(":scheme"),
        without(":path"),
        without(":method"),
        vec![("x-a", "1"), GET[0], GET[1], GET[2], GET[3]],
        vec![GET[0], GET[1], GET[2], (":path", "/a b")],
        vec![GET[0], GET[1], GET[2], (":path", "a")],
        vec![(":method", "G T"), GET[1], GET[2], GET[3]],
        vec![GET[0], GET[1], (":authority", "a@b"), GET[3]],
        vec![GET[0], GET[1], (":authority", ""), GET[3]],
    ];
    let mut id = 1;
    for fields in &cases {
        headers(&mut st, id, fields, true).unwrap();
        assert!(st.accepted.is_empty(), "{fields:?} was accepted");
        assert_eq!(resets(&st), [(id, Code::PROTOCOL_ERROR)], "{fields:?}");
        st.conn.out.clear();
        id += 2;
    }
    // The connection goes on.
    headers(&mut st, id, &GET, true).unwrap();
    assert_eq!(st.accepted.len(), 1);
}

#[test]
fn connect_and_heads_past_the_limit_are_answered_at_once() {
    let mut st = open(1024);
    let connect = [(":method", "CONNECT"), (":authority", "a.test:443")];
    headers(&mut st, 1, &connect, false).unwrap();
    let big = "x".repeat(1000);
    let mut fields = GET.to_vec();
    fields.push(("x-big", &big));
    headers(&mut st, 3, &fields, true).unwrap();
    assert!(st.accepted.is_empty());
    let frames = sent(&st.conn.out);
    let answers: Vec<_> = frames.iter().filter(|f| f.0 == frame::HEADERS).collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].1, 1);
    assert_eq!(decode(&answers[0].2)[0], (":status".into(), "501".into()));
    assert_eq!(decode(&answers[1].2)[0], (":status".into(), "431".into()));
    // The CONNECT stream was still open: the client is told to stop sending on it.
    assert_eq!(resets(&st), [(1, Code::NO_ERROR)]);
    // Frames it sent meanwhile on the stream are ignored.
    st.on_bytes(&frame(frame::DATA, frame::END_STREAM, 1, b"x"))
        .unwrap();
    let f = frame(frame::HEADERS, 5, 1, &block(&[("x-t", "1")]));
    assert_eq!(st.on_bytes(&f), Ok(f.len()));
}

#[test]
fn streams_past_the_limit_are_refused() {
    let mut st = open(64 * 1024);
    for i in 0..MAX_STREAMS {
        headers(&mut st, 2 * i + 1, &GET, false).unwrap();
    }
    st.conn.out.clear();
    let id = 2 * MAX_STREAMS + 1;
    headers(&mut st, id, &GET, true).unwrap();
    assert_eq!(st.accepted.len(), MAX_STREAMS as usize);
    assert_eq!(resets(&st), [(id, Code::REFUSED_STREAM)]);
    // One ends: there is room again.
    st.close(1);
    headers(&mut st, id + 2, &GET, true).unwrap();
    assert_eq!(st.accepted.len(), MAX_STREAMS as usize + 1);
}

#[test]
fn a_headers_frame_on_a_stream_the_client_closed_ends_the_connection() {
    let mut st = open(64 * 1024);
    headers(&mut st, 1, &GET, false).unwrap();
    st.on_bytes(&frame(frame::RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .unwrap();
    st.close(1);
    assert_eq!(
        headers(&mut st, 1, &GET, true),
        Err(Code::STREAM_CLOSED),
        "a stream id may not be used again"
    );
}

#[test]
fn frames_on_closed_streams_are_stream_closed_errors() {
    let f = frame;
    // The client reset stream 1 (still being served), 3 and 5 (done with): DATA or
    // WINDOW_UPDATE on any is a stream error (once: the stream is then ours to ignore);
    // another RST_STREAM and PRIORITY are not.
    let mut st = open(64 * 1024);
    for id in [1, 3, 5] {
        headers(&mut st, id, &GET, false).unwrap();
        st.on_bytes(&f(frame::RST_STREAM, 0, id, &8u32.to_be_bytes()))
            .unwrap();
    }
    st.close(3);
    st.close(5);
    st.conn.out.clear();
    for (ty, id) in [
        (frame::DATA, 1),
        (frame::WINDOW_UPDATE, 3),
        (frame::DATA, 5),
    ] {
        let payload: &[u8] = if ty == frame::DATA {
            b"late"
        } else {
            &[0, 0, 0, 1]
        };
        let bytes = f(ty, 0, id, payload);
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()), "type {ty} on {id}");
        assert_eq!(
            resets(&st),
            [(id, Code::STREAM_CLOSED)],
            "type {ty} on {id}"
        );
        st.conn.out.clear();
    }
    for bytes in [
        f(frame::RST_STREAM, 0, 3, &8u32.to_be_bytes()),
        f(frame::PRIORITY, 0, 3, &[0, 0, 0, 0, 16]),
    ] {
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
        assert!(resets(&st).is_empty());
    }
    // Stream 7 ended both ways (the request with its head, the answer whole): a late
    // WINDOW_UPDATE may cross our end and is ignored, DATA is a connection error.
    headers(&mut st, 7, &GET, true).unwrap();
    if let Some(s) = st.stream(7) {
        s.sent_end = true;
    }
    st.close(7);
    st.conn.out.clear();
    let bytes = f(frame::WINDOW_UPDATE, 0, 7, &[0, 0, 0, 1]);
    assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
    assert_eq!(
        st.on_bytes(&f(frame::DATA, 0, 7, b"late")),
        Err(Code::STREAM_CLOSED)
    );
    // A stream we reset: what the client sent before it heard is ignored.
    let mut st = open(64 * 1024);
    headers(&mut st, 1, &GET, false).unwrap();
    st.close(1);
    st.conn.out.clear();
    let bytes = f(frame::DATA, 0, 1, b"late");
    assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
    assert!(resets(&st).is_empty());
}

#[test]
fn field_values_with_whitespace_at_either_end_are_malformed() {
    for value in [" x", "x ", "\tx", "x\t"] {
        let mut st = open(64 * 1024);
        let mut fields = GET.to_vec();
        fields.push(("x-padded", value));
        headers(&mut st, 1, &fields, true).unwrap();
        assert!(st.accepted.is_empty(), "{value:?}");
        assert_eq!(resets(&st), [(1, Code::PROTOCOL_ERROR)], "{value:?}");
    }
    let mut st = open(64 * 1024);
    let mut fields = GET.to_vec();
    fields.push(("x-inner", "a b\tc"));
    headers(&mut st, 1, &fields, true).unwrap();
    assert_eq!(st.accepted.len(), 1);
}

#[test]
fn a_flood_of_empty_continuation_frames_is_cut_off() {
    let mut st = open(16 * 1024);
    let mut input = frame(frame::HEADERS, 0, 1, &block(&GET));
    for _ in 0..1000 {
        input.extend(frame(frame::CONTINUATION, 0, 1, &[]));
    }
    assert_eq!(st.on_bytes(&input), Err(Code::ENHANCE_YOUR_CALM));
}

#[test]
fn rapid_resets_past_the_burst_end_the_connection() {
    let mut st = open(64 * 1024);
    let mut id = 1;
    let r = loop {
        let mut f = frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            &block(&GET),
        );
        f.extend(frame(frame::RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if let Err(code) = st.on_bytes(&f) {
            break code;
        }
        st.close(id);
        id += 2;
        assert!(id < 1000, "never cut off");
    };
    assert_eq!(r, Code::ENHANCE_YOUR_CALM);
    assert!(id / 2 >= RESET_BURST as u32);
}

#[test]
fn connection_errors_get_the_codes_rfc_9113_names() {
    let get = block(&GET);
    let f = frame;
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        (
            "DATA on stream 0",
            f(frame::DATA, 0, 0, b"x"),
            Code::PROTOCOL_ERROR,
        ),
        (
            "DATA on an idle stream",
            f(frame::DATA, 0, 9, b"x"),
            Code::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on stream 0",
            f(frame::HEADERS, 5, 0, &get),
            Code::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even stream",
            f(frame::HEADERS, 5, 2, &get),
            Code::PROTOCOL_ERROR,
        ),
        (
            "a frame past SETTINGS_MAX_FRAME_SIZE",
            f(frame::DATA, 0, 1, &[0; MAX_FRAME + 1]),
            Code::FRAME_SIZE_ERROR,
        ),
        (
            "padding as long as the frame",
            f(frame::HEADERS, 0x8 | 5, 1, &[4, 0, 0, 0]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            f(frame::CONTINUATION, 4, 1, &get),
            Code::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS on a stream",
            f(frame::SETTINGS, 0, 1, &[]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS of a partial length",
            f(frame::SETTINGS, 0, 0, &[0, 4, 0]),
            Code::FRAME_SIZE_ERROR,
        ),
        (
            "a SETTINGS ACK with a payload",
            f(frame::SETTINGS, 1, 0, &[0; 6]),
            Code::FRAME_SIZE_ERROR,
        ),
        (
            "ENABLE_PUSH of 2",
            f(frame::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "INITIAL_WINDOW_SIZE past 2^31-1",
            f(frame::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            Code::FLOW_CONTROL_ERROR,
        ),
        (
            "MAX_FRAME_SIZE below 16384",
            f(frame::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "PING on a stream",
            f(frame::PING, 0, 1, &[0; 8]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "PING of 7 bytes",
            f(frame::PING, 0, 0, &[0; 7]),
            Code::FRAME_SIZE_ERROR,
        ),
        (
            "GOAWAY on a stream",
            f(frame::GOAWAY, 0, 1, &[0; 8]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on stream 0",
            f(frame::RST_STREAM, 0, 0, &[0; 4]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            f(frame::RST_STREAM, 0, 7, &[0; 4]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 0 on the connection",
            f(frame::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 3 bytes",
            f(frame::WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
            Code::FRAME_SIZE_ERROR,
        ),
        (
            "the connection window past 2^31-1",
            f(frame::WINDOW_UPDATE, 0, 0, &[0x7f, 0xff, 0xff, 0xff]),
            Code::FLOW_CONTROL_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            f(frame::PUSH_PROMISE, 4, 1, &[0, 0, 0, 2]),
            Code::PROTOCOL_ERROR,
        ),
        (
            "an HPACK index past the tables",
            f(frame::HEADERS, 5, 1, &[0xff, 0x7f]),
            Code::COMPRESSION_ERROR,
        ),
        (
            "a table size past SETTINGS_HEADER_TABLE_SIZE",
            f(frame::HEADERS, 5, 1, &[0x3f, 0xe2, 0x1f]),
            Code::COMPRESSION_ERROR,
        ),
        (
            "a table size update after a field",
            f(frame::HEADERS, 5, 1, &[0x82, 0x20]),
            Code::COMPRESSION_ERROR,
        ),
        (
            "a literal cut short",
            f(frame::HEADERS, 5, 1, &[0x00, 0x05, b'a']),
            Code::COMPRESSION_ERROR,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut st = open(64 * 1024);
        // Stream 1 open and ended, so that later ids are new and lower ones closed.
        if what.contains("RST_STREAM on an idle") {
            headers(&mut st, 1, &GET, true).unwrap();
        }
        assert_eq!(st.on_bytes(&bytes), Err(want), "{what}");
    }
    // A frame interleaved in a header block.
    let mut st = open(64 * 1024);
    let mut bytes = f(frame::HEADERS, 1, 1, &get);
    bytes.extend(f(frame::PRIORITY, 0, 3, &[0; 5]));
    assert_eq!(st.on_bytes(&bytes), Err(Code::PROTOCOL_ERROR));
    // Unknown frame types and settings are ignored.
    let mut st = open(64 * 1024);
    let mut bytes = f(0x42, 0xff, 0, b"whatever");
    bytes.extend(f(frame::SETTINGS, 0, 0, &[0x7f, 0x7f, 0, 0, 0, 1]));
    assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
}

#[test]
fn stream_errors_reset_the_stream_and_the_connection_goes_on() {
    let mut st = open(64 * 1024);
    headers(&mut st, 1, &GET, false).unwrap();
    headers(&mut st, 3, &GET, true).unwrap();
    headers(&mut st, 5, &GET, false).unwrap();
    st.conn.out.clear();
    let f = frame;
    let cases = [
        (
            f(frame::WINDOW_UPDATE, 0, 1, &[0; 4]),
            1,
            Code::PROTOCOL_ERROR,
        ),
        (f(frame::DATA, 0, 3, b"late"), 3, Code::STREAM_CLOSED),
        (f(frame::PRIORITY, 0, 5, &[0; 4]), 5, Code::FRAME_SIZE_ERROR),
    ];
    for (bytes, id, want) in cases {
        assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
        assert_eq!(resets(&st), [(id, want)]);
        st.conn.out.clear();
    }
    // A stream may not depend on itself (RFC 9113 section 5.3.1).
    let mut p = vec![0, 0, 0, 7, 16];
    p.extend(block(&GET));
    let bytes = f(frame::HEADERS, 0x20 | 5, 7, &p);
    assert_eq!(st.on_bytes(&bytes), Ok(bytes.len()));
    assert_eq!(resets(&st), [(7, Code::PROTOCOL_ERROR)]);
    // On a stream not yet open, no reset can answer it: the connection ends.
    let bytes = f(frame::PRIORITY, 0, 9, &[0, 0, 0, 9, 16]);
    assert_eq!(st.on_bytes(&bytes), Err(Code::PROTOCOL_ERROR));
}

#[test]
fn a_block_of_references_to_a_large_entry_ends_the_connection() {
    let mut st = open(64 * 1024);
    let mut b = block(&GET);
    // cookie: 4,000 bytes, indexed; then 200 one-byte references to it (800 KB decoded).
    b.push(0x40 | 32);
    hpack::put_int(&mut b, 0, 7, 4000);
    b.extend(std::iter::repeat_n(b'c', 4000));
    b.extend(std::iter::repeat_n(0x80 | 62, 200));
    assert!(b.len() < 5000);
    let bytes = frame(frame::HEADERS, 5, 1, &b);
    assert_eq!(st.on_bytes(&bytes), Err(Code::ENHANCE_YOUR_CALM));
}

#[test]
fn after_our_goaway_new_streams_are_ignored_and_the_last_id_never_grows() {
    let mut st = open(64 * 1024);
    headers(&mut st, 1, &GET, false).unwrap();
    st.conn.go_away();
    headers(&mut st, 3, &GET, false).unwrap();
    assert_eq!(st.accepted.len(), 1, "stream 3 is past the GOAWAY");
    // Its trailers, sent before the client heard, are ignored too.
    let t = frame(frame::HEADERS, 5, 3, &block(&[("x-t", "1")]));
    assert_eq!(st.on_bytes(&t), Ok(t.len()));
    st.conn.fail(Some(Code::PROTOCOL_ERROR));
    let lasts: Vec<u32> = sent(&st.conn.out)
        .into_iter()
        .filter(|f| f.0 == frame::GOAWAY)
        .map(|f| be32(&f.2))
        .collect();
    assert_eq!(lasts, [1, 1]);
}

#[test]
fn streams_refused_for_the_limit_are_not_counted_as_abuse() {
    let mut st = open(64 * 1024);
    for i in 0..MAX_STREAMS {
        headers(&mut st, 2 * i + 1, &GET, false).unwrap();
    }
    for i in 0..2 * MAX_LOCAL_RESETS as u32 {
        headers(&mut st, 2 * (MAX_STREAMS + i) + 1, &GET, true).unwrap();
    }
    // A stream the client reset leaves room, though its task has not ended yet.
    let id = 1;
    let r = frame(frame::RST_STREAM, 0, id, &8u32.to_be_bytes());
    st.on_bytes(&r).unwrap();
    let accepted = st.accepted.len();
    let next = 2 * (MAX_STREAMS + 2 * MAX_LOCAL_RESETS as u32) + 1;
    headers(&mut st, next, &GET, true).unwrap();
    assert_eq!(st.accepted.len(), accepted + 1);
}

/// A client connection with `n` requests sent whole (streams 1, 3, ...), the peer's SETTINGS
/// taken as come.
fn client_with(n: u8) -> Peer {
    let config = Config {
        role: Role::Client,
        max_streams: 100,
        stream_window: 1024 * 1024,
        connection_window: 4 * 1024 * 1024,
        max_head: 256 * 1024,
    };
    let mut st = Peer {
        conn: Connection::new(config, Instant::now()),
        ev: Recorded {
            client: true,
            ..Recorded::default()
        },
        accepted: Vec::new(),
    };
    for _ in 0..n {
        st.conn.open(&block(&GET), true);
    }
    // What the tests look at is what comes after: the preface is no frame.
    st.conn.out.clear();
    st
}

/// The answer a stream's reader gets, as HTTP/1.1: head, then body.
fn answer_text(st: &Peer, id: u32) -> String {
    let Some(resp) = st.ev.answers.get(&id) else {
        return String::new();
    };
    let inbox = &st.ev.inbox[&id];
    let body = resp.body_framing(false);
    let cf = crate::http1::encode::client_framing(body, resp, crate::head::Version::Http11, true);
    let mut out = Vec::new();
    crate::http1::encode::response_head(&mut out, &inbox.bytes, resp, cf);
    out.extend_from_slice(&inbox.bytes[resp.head_len..]);
    String::from_utf8_lossy(&out).into_owned()
}

/// What an upstream may not send ends its stream, and the forwarding path gets an error, not
/// a forged answer.
#[test]
fn an_answer_with_a_line_break_in_a_value_is_refused() {
    let mut st = client_with(1);
    st.conn.settled = true;
    let mut b = Vec::new();
    hpack::put_indexed(&mut b, hpack::STATUS);
    hpack::put_literal(&mut b, b"x-evil", b"a\r\nset-cookie: b");
    let f = frame(frame::HEADERS, frame::END_HEADERS, 1, &b);
    assert_eq!(st.on_bytes(&f), Ok(f.len()));
    assert!(st.ev.answers.is_empty());
    assert_eq!(
        st.stream(1).unwrap().failure,
        Some(Failure::Local(Code::PROTOCOL_ERROR))
    );
    assert!(!st.conn.is_dead(), "a stream error, not the connection's");
}

/// The fuzz seeds: what each stream's reader gets, as HTTP/1.1.
#[test]
fn the_fuzz_seeds_translate_as_expected() {
    let seed = |name: &str| {
        let path = format!(
            "{}/../fuzz/corpus/h2_client/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    };
    let run = |input: &[u8]| {
        let mut st = client_with(input[0]);
        let n = st.on_bytes(&input[1..]).unwrap();
        assert_eq!(n, input.len() - 1, "every frame taken");
        st
    };
    let st = run(&seed("answer"));
    assert_eq!(
        answer_text(&st, 1),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    );
    assert!(st.conn.stream(1).unwrap().recv_end);
    let st = run(&seed("chunked-trailers"));
    assert_eq!(
        answer_text(&st, 1),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
    );
    let st = run(&seed("control"));
    assert_eq!(st.conn.goaway_received, Some(1));
    assert_eq!(
        st.conn.stream(3).unwrap().failure,
        Some(Failure::Reset(Code::REFUSED_STREAM))
    );
    assert!(
        st.conn.stream(1).unwrap().failure.is_none(),
        "stream 1 goes on after GOAWAY 1"
    );
    let st = run(&seed("interim"));
    assert_eq!(answer_text(&st, 1), "HTTP/1.1 204 No Content\r\n\r\n");
}

/// A small block of references to one large table entry does not become a large head.
#[test]
fn a_block_that_expands_past_the_head_limit_is_refused() {
    let mut st = client_with(2);
    st.conn.settled = true;
    // An answer that puts a 4,000-byte field in the table...
    let mut b = Vec::new();
    hpack::put_indexed(&mut b, hpack::STATUS);
    b.push(0x40);
    hpack::put_int(&mut b, 0, 7, 3);
    b.extend_from_slice(b"x-a");
    hpack::put_int(&mut b, 0, 7, 4000);
    b.extend_from_slice(&[b'a'; 4000]);
    let mut frames = frame(frame::HEADERS, frame::END_HEADERS, 1, &b);
    // ...then one of 100 references to it: 400 KB from 101 bytes.
    let mut bomb = vec![0x88];
    bomb.extend_from_slice(&[0xbe; 100]);
    frames.extend(frame(frame::HEADERS, frame::END_HEADERS, 3, &bomb));
    assert_eq!(st.on_bytes(&frames), Ok(frames.len()));
    assert!(st.conn.stream(1).unwrap().failure.is_none());
    assert!(st.ev.inbox[&1].bytes.len() > 4000);
    assert_eq!(
        st.conn.stream(3).unwrap().failure,
        Some(Failure::Local(Code::PROTOCOL_ERROR))
    );
    assert!(!st.ev.answers.contains_key(&3));
    assert!(!st.conn.is_dead());
}

/// PINGs from a peer that does not read our answers cost a bounded amount of memory.
#[test]
fn a_ping_flood_from_a_peer_that_does_not_read_ends_the_connection() {
    let mut st = client_with(0);
    st.conn.settled = true;
    let mut ping = Vec::new();
    frame_head(&mut ping, 8, frame::PING, 0, 0);
    ping.extend_from_slice(b"12345678");
    let flood = ping.repeat(OUT_CAP / ping.len() + 10);
    assert_eq!(st.on_bytes(&flood), Err(Code::ENHANCE_YOUR_CALM));
    assert!(st.conn.out.len() <= OUT_CAP + ping.len());
}

/// Both sides follow the same rules for frames on streams that are done: a peer that resets a
/// request and then sends DATA on it gets a stream error; DATA before an answer's head is
/// malformed.
#[test]
fn the_client_side_keeps_the_same_stream_rules() {
    let mut st = client_with(2);
    st.conn.settled = true;
    let data = frame(frame::DATA, 0, 1, b"early");
    assert_eq!(st.on_bytes(&data), Ok(data.len()));
    assert_eq!(resets(&st), [(1, Code::PROTOCOL_ERROR)]);
    st.conn.out.clear();
    let rst = frame(frame::RST_STREAM, 0, 3, &8u32.to_be_bytes());
    st.on_bytes(&rst).unwrap();
    assert_eq!(
        st.ev.failed,
        [
            (1, Failure::Local(Code::PROTOCOL_ERROR)),
            (3, Failure::Reset(Code::CANCEL))
        ]
    );
    let late = frame(frame::DATA, 0, 3, b"late");
    assert_eq!(st.on_bytes(&late), Ok(late.len()));
    assert_eq!(resets(&st), [(3, Code::STREAM_CLOSED)]);
    // A stream the server never saw opened: HEADERS on it is the connection's error.
    let unopened = frame(frame::HEADERS, frame::END_HEADERS, 5, &[0x88]);
    assert_eq!(st.on_bytes(&unopened), Err(Code::PROTOCOL_ERROR));
}

/// An upstream's GOAWAY refuses the requests past its last stream: they fail as refused (the
/// forwarding path may send them again), the rest go on, and no new stream opens.
#[test]
fn a_goaway_refuses_later_requests_and_closes_the_connection_to_new_ones() {
    let mut st = client_with(3);
    st.conn.settled = true;
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    st.on_bytes(&frame(frame::GOAWAY, 0, 0, &p)).unwrap();
    let refused = Some(Failure::Reset(Code::REFUSED_STREAM));
    assert_eq!(st.conn.stream(3).unwrap().failure, refused);
    assert_eq!(st.conn.stream(5).unwrap().failure, refused);
    assert!(st.conn.stream(1).unwrap().failure.is_none());
    assert!(!st.conn.usable());
    assert_eq!(st.conn.open(&block(&GET), true), None);
}

/// Window updates past 2^31 - 1, and DATA past what was granted, are flow-control errors.
#[test]
fn flow_control_is_held_both_ways() {
    let mut st = client_with(1);
    st.conn.settled = true;
    let mut b = Vec::new();
    hpack::put_indexed(&mut b, hpack::STATUS);
    st.on_bytes(&frame(frame::HEADERS, frame::END_HEADERS, 1, &b))
        .unwrap();
    let big = frame(frame::WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes());
    assert_eq!(st.on_bytes(&big), Ok(big.len()));
    assert_eq!(resets(&st), [(1, Code::FLOW_CONTROL_ERROR)]);
    // A server sending past what it was granted, unread: on a stream, past its window (1 MiB),
    // a stream error; on the connection, past its window (4 MiB over five streams), the
    // connection's.
    let mut st = client_with(5);
    st.conn.settled = true;
    let chunk = |id| frame(frame::DATA, 0, id, &[0; MAX_FRAME]);
    for id in [1, 3, 5, 7, 9] {
        st.on_bytes(&frame(frame::HEADERS, frame::END_HEADERS, id, &b))
            .unwrap();
    }
    for _ in 0..64 {
        st.on_bytes(&chunk(1)).unwrap();
    }
    assert!(resets(&st).is_empty());
    st.on_bytes(&chunk(1)).unwrap();
    assert_eq!(resets(&st), [(1, Code::FLOW_CONTROL_ERROR)]);
    let r = [3, 5, 7, 9]
        .into_iter()
        .flat_map(|id| std::iter::repeat_n(id, 64))
        .try_for_each(|id| st.on_bytes(&chunk(id)).map(|_| ()));
    assert_eq!(r, Err(Code::FLOW_CONTROL_ERROR));
}
