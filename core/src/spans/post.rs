//! The exporter thread: gathers batches into OTLP requests and posts them, on one kept-alive
//! connection per collector, with a time bound on every step.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Batch, CONNECT_TIMEOUT, EXPORTED, ExportSpec, FAILED, IO_TIMEOUT, MAX_POST, encode};

/// Largest answer head and body read from a collector (OTLP answers with a small message).
const MAX_ANSWER: usize = 64 * 1024;

pub(super) fn run(rx: flume::Receiver<Batch>) {
    let mut conn: Option<(String, TcpStream)> = None;
    let mut body = Vec::with_capacity(MAX_POST + 64 * 1024);
    let mut warned = false;
    while let Ok(first) = rx.recv() {
        let export = first.export.clone();
        let mut batches = vec![first];
        let mut size = batches[0].data.len();
        // More of the same collector's batches that are already waiting, up to a post's size.
        while size < MAX_POST {
            match rx.try_recv() {
                Ok(b) if Arc::ptr_eq(&b.export, &export) || b.export == export => {
                    size += b.data.len();
                    batches.push(b);
                }
                Ok(other) => {
                    post_all(&mut conn, &mut body, &export, &batches, &mut warned);
                    batches = vec![other];
                    break;
                }
                Err(_) => break,
            }
        }
        let export = batches[0].export.clone();
        post_all(&mut conn, &mut body, &export, &batches, &mut warned);
    }
}

fn post_all(
    conn: &mut Option<(String, TcpStream)>,
    body: &mut Vec<u8>,
    export: &ExportSpec,
    batches: &[Batch],
    warned: &mut bool,
) {
    let spans: u64 = batches.iter().map(|b| b.spans).sum();
    body.clear();
    let parts: Vec<&[u8]> = batches.iter().map(|b| &b.data[..]).collect();
    encode::request(body, &export.service, &export.instance, &parts);
    match post(conn, export, body) {
        Ok(status) if (200..300).contains(&status) => {
            EXPORTED.fetch_add(spans, Ordering::Relaxed);
            if *warned {
                tracing::info!(collector = %export.endpoint.connect, "span export: the collector takes spans again");
                *warned = false;
            }
        }
        r => {
            FAILED.fetch_add(spans, Ordering::Relaxed);
            if !*warned {
                let why = match r {
                    Ok(status) => format!("answered {status}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(collector = %export.endpoint.connect, error = %why, spans, "span export: post failed; spans are counted as failed until it works again");
                *warned = true;
            }
        }
    }
    // A large post's buffer is not kept.
    if body.capacity() > 4 * MAX_POST {
        *body = Vec::with_capacity(MAX_POST);
    }
}

/// Posts `body`; on a kept-alive connection that the collector had closed (no answer byte),
/// once more on a new one.
fn post(
    conn: &mut Option<(String, TcpStream)>,
    export: &ExportSpec,
    body: &[u8],
) -> std::io::Result<u16> {
    let ep = &export.endpoint;
    if conn.as_ref().is_some_and(|(to, _)| *to != ep.connect) {
        *conn = None;
    }
    let reused = conn.is_some();
    match exchange(conn, export, body) {
        // A kept connection the collector closed meanwhile: the post never reached it. (A
        // timeout is not that: the collector may have it, and would get it twice.)
        Err((e, false))
            if reused
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
        {
            tracing::debug!(error = %e, "span export: kept connection closed; posting again");
            *conn = None;
            exchange(conn, export, body).map_err(|(e, _)| e)
        }
        r => r.map_err(|(e, _)| e),
    }
}

/// One request and its answer. An error says whether any of the answer was read.
fn exchange(
    conn: &mut Option<(String, TcpStream)>,
    export: &ExportSpec,
    body: &[u8],
) -> Result<u16, (std::io::Error, bool)> {
    let ep = &export.endpoint;
    if conn.is_none() {
        *conn = Some((
            ep.connect.clone(),
            connect(&ep.connect).map_err(|e| (e, true))?,
        ));
    }
    let Some((_, stream)) = conn.as_mut() else {
        return Err((std::io::Error::other("not connected"), true));
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: ringmesh/{}\r\n\r\n",
        ep.path,
        ep.host,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    if let Err(e) = sent {
        *conn = None;
        return Err((e, false));
    }
    match read_answer(stream) {
        Ok((status, keep)) => {
            if !keep {
                *conn = None;
            }
            Ok(status)
        }
        Err((e, started)) => {
            *conn = None;
            Err((e, started))
        }
    }
}

fn connect(to: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in to.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the collector's name has no address")))
}

/// Reads an answer: its status, and whether the connection may carry another request.
fn read_answer(stream: &mut TcpStream) -> Result<(u16, bool), (std::io::Error, bool)> {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        if have == buf.len() {
            if buf.len() >= MAX_ANSWER {
                return Err((std::io::Error::other("answer head too large"), true));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[have..]) {
            Ok(0) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "collector closed");
                return Err((e, have > 0));
            }
            Ok(n) => n,
            Err(e) => return Err((e, have > 0)),
        };
        have += n;
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut fields);
        let parsed = r
            .parse(&buf[..have])
            .map_err(|e| (std::io::Error::other(e.to_string()), true))?;
        let httparse::Status::Complete(head_len) = parsed else {
            continue;
        };
        let status = r.code.unwrap_or(0);
        let field = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let close = field("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        let length = field("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        let Some(length) = length.filter(|&l| l <= MAX_ANSWER) else {
            // No length (chunked, or to the close), or too long: the status is enough, and the
            // connection is not reused.
            return Ok((status, false));
        };
        let mut left = (head_len + length).saturating_sub(have);
        let mut sink = [0u8; 4096];
        while left > 0 {
            let n = stream
                .read(&mut sink[..left.min(4096)])
                .map_err(|e| (e, true))?;
            if n == 0 {
                return Ok((status, false));
            }
            left -= n;
        }
        // Bytes past the answer would be an answer nobody asked for: not reused then.
        let extra = have > head_len + length;
        return Ok((status, !close && !extra));
    }
}
