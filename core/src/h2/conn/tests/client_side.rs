//! The client side: what upstreams may and may not send.

use super::*;

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
    crate::http1::encode::response_head(&mut out, &inbox.bytes, resp, cf, None);
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
