//! The adapter over real loopback sockets: plaintext arrives whole whatever the caller's
//! buffers (small, offset slices, iovec lists), both halves of a split stream work at once,
//! and the two ways a peer can end (close_notify, or a bare TCP close) read as they should on
//! each side.

use std::io;
use std::sync::Arc;

use monoio::buf::{IoBufMut, VecBuf};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::{TlsStream, accept};
use crate::testing::block_on;
use crate::tls::{CertSpec, ClientTls, ServerTls, memory};

/// A CA and a leaf for `localhost` held in memory under `tag`; the server's and the client's
/// settings built from them, as a listener and a cluster would be.
fn configs(tag: &str) -> (Arc<rustls::ServerConfig>, ClientTls) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    memory::put(&format!("{tag}-ca"), ca.pem().as_bytes());
    memory::put(&format!("{tag}-cert"), leaf.pem().as_bytes());
    memory::put(&format!("{tag}-key"), leaf_key.serialize_pem().as_bytes());
    let spec = CertSpec {
        cert: format!("mem:{tag}-cert"),
        key: format!("mem:{tag}-key"),
        sni: Vec::new(),
    };
    let server = ServerTls::build(tag, &[spec], &["http/1.1".to_string()], None)
        .unwrap()
        .config();
    let client =
        ClientTls::build("localhost", &format!("mem:{tag}-ca"), None, &[b"http/1.1"]).unwrap();
    (server, client)
}

/// A connected pair: (the server's end, the client's end).
async fn pair(tag: &str) -> (TlsStream, TlsStream) {
    let (server_cfg, client) = configs(tag);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, server_cfg).await.0.expect("server handshake")
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = client.connect(tcp).await.0.expect("client handshake");
    (server.await, client)
}

/// Bytes that show where a misplaced or lost piece went.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn small_buffers_read_every_record_whole() {
    block_on(async {
        let (mut server, mut client) = pair("small").await;
        // Several records (16 KiB each at most), read 7 bytes at a time.
        let sent = pattern(100_000);
        let writer = monoio::spawn({
            let sent = sent.clone();
            async move {
                let (r, _) = client.write_all(sent).await;
                r.unwrap();
                client
            }
        });
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let (r, piece) = server.read(Vec::with_capacity(7)).await;
            let n = r.unwrap();
            assert!(n > 0 && n <= 7, "a read of {n} into 7 bytes of room");
            assert_eq!(piece.len(), n);
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, sent);
        drop(writer.await);
    });
}

#[test]
fn offset_slices_and_iovec_lists_are_filled_where_they_point() {
    block_on(async {
        let (mut server, mut client) = pair("shapes").await;
        let (r, _) = client.write_all(b"abcdefgh".to_vec()).await;
        r.unwrap();
        // Into the room after four bytes already there.
        let mut buf = b"1234".to_vec();
        buf.reserve_exact(4);
        let cap = buf.capacity();
        let (r, part) = server.read(buf.slice_mut(4..cap)).await;
        let n = r.unwrap();
        let buf = part.into_inner();
        assert_eq!(&buf[..4], b"1234");
        assert_eq!(&buf[4..], &b"abcdefgh"[..n]);
        // The rest into an iovec list: only its first buffer is filled (a short read).
        let mut rest = b"abcdefgh"[n..].to_vec();
        while !rest.is_empty() {
            let list = VecBuf::from(vec![vec![0u8; 2], vec![9u8; 3]]);
            let (r, list) = server.readv(list).await;
            let m = r.unwrap();
            assert!(m > 0 && m <= 2);
            let bufs: Vec<Vec<u8>> = list.into();
            assert_eq!(&bufs[0][..m], &rest[..m]);
            assert_eq!(bufs[1], [9u8; 3], "only the first iovec is read into");
            rest.drain(..m);
        }
    });
}

#[test]
fn split_halves_read_and_write_at_once() {
    block_on(async {
        let (server, mut client) = pair("split").await;
        // The server echoes through its two halves while the client sends and reads.
        let echo = monoio::spawn(async move {
            let (mut r, mut w) = server.into_split();
            let mut buf = Vec::with_capacity(4096);
            loop {
                let (n, b) = r.read(buf).await;
                let n = n.unwrap();
                if n == 0 {
                    break;
                }
                let (res, b) = w.write_all(b).await;
                res.unwrap();
                buf = b;
                buf.clear();
            }
            w.shutdown().await.unwrap();
        });
        let sent = pattern(50_000);
        let (r, _) = client.write_all(sent.clone()).await;
        r.unwrap();
        let (r, got) = client.read_exact(vec![0u8; sent.len()]).await;
        r.unwrap();
        assert_eq!(got, sent);
        client.shutdown().await.unwrap();
        echo.await;
    });
}

#[test]
fn close_notify_ends_the_stream_on_both_sides() {
    block_on(async {
        let (mut server, mut client) = pair("notify").await;
        client.shutdown().await.unwrap();
        let (r, _) = server.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0, "close_notify reads as the end");
        server.shutdown().await.unwrap();
        let (r, _) = client.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0);
    });
}

#[test]
fn a_bare_close_is_an_end_from_a_client_and_a_truncation_from_an_upstream() {
    block_on(async {
        // A client that closes its socket between requests ends the connection normally. (It
        // reads a first answer so that the session tickets sent before it are taken off its
        // socket: closing with unread bytes would be a reset, not a close.)
        let (mut server, mut client) = pair("bare-client").await;
        let (r, _) = server.write_all(b"hi".to_vec()).await;
        r.unwrap();
        let (r, _) = client.read_exact(vec![0u8; 2]).await;
        r.unwrap();
        drop(client);
        let (r, _) = server.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0);

        // An upstream that does the same may have cut an answer short: an error.
        let (server, mut client) = pair("bare-upstream").await;
        drop(server);
        let (r, _) = client.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    });
}

#[test]
fn a_client_of_another_ca_is_refused_and_nothing_is_read() {
    block_on(async {
        let (server_cfg, _) = configs("trusted");
        let (_, stranger) = configs("stranger");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = monoio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server_cfg).await.0.is_some()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, _) = stranger.connect(tcp).await;
        assert!(client.is_none(), "a certificate of another CA was trusted");
        assert!(
            !server.await,
            "the server finished a handshake the client abandoned"
        );
    });
}
