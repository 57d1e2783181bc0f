//! The server side: what clients may and may not send.

use super::*;

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
