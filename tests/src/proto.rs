//! One client interface over both protocols, so that a test body runs against HTTP/1.1 and
//! HTTP/2 alike (`tests/tests/transparency.rs`): what a client asks, and what it gets back, with
//! the framing each protocol has left out.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};

use crate::h2::H2Client;
use crate::read_response;

/// A request, whichever protocol carries it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub method: &'static str,
    pub path: String,
    pub authority: String,
    /// Fields, names lowercase (HTTP/2 takes no other).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Say the body's length (HTTP/1.1 Content-Length, HTTP/2 content-length); otherwise it
    /// streams (chunked, or DATA until END_STREAM).
    pub length: bool,
    /// Trailer fields after the body (which then streams).
    pub trailers: Vec<(String, String)>,
}

impl Ask {
    /// `method path` for `a.test`, no body.
    pub fn new(method: &'static str, path: &str) -> Ask {
        Ask {
            method,
            path: path.to_string(),
            authority: "a.test".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            length: true,
            trailers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Ask {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>, length: bool) -> Ask {
        self.body = body.into();
        self.length = length;
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Ask {
        self.trailers.push((name.to_string(), value.to_string()));
        self.length = false;
        self
    }
}

/// An answer as a client got it.
#[derive(Debug, Clone, Default)]
pub struct Got {
    pub status: u16,
    /// Fields, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Got {
    /// First value of a field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A protocol a client speaks to the proxy.
pub trait Protocol {
    /// For messages.
    const NAME: &'static str;
    /// One exchange with the proxy at `addr`, on a connection of its own.
    fn exchange(addr: SocketAddr, ask: &Ask) -> Got;
}

/// HTTP/1.1, written by hand: exactly these bytes go.
pub struct Http1;

impl Protocol for Http1 {
    const NAME: &'static str = "HTTP/1.1";

    fn exchange(addr: SocketAddr, ask: &Ask) -> Got {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {}\r\n",
            ask.method, ask.path, ask.authority
        )
        .into_bytes();
        for (n, v) in &ask.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if ask.length {
            if !ask.body.is_empty() {
                out.extend_from_slice(format!("content-length: {}\r\n", ask.body.len()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&ask.body);
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in ask.body.chunks(16 * 1024) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (n, v) in &ask.trailers {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        s.write_all(&out).expect("send");
        let mut r = BufReader::new(s);
        let mut resp = read_response(&mut r, ask.method == "HEAD").expect("an answer");
        while (100..200).contains(&resp.status) {
            resp = read_response(&mut r, ask.method == "HEAD").expect("an answer");
        }
        let lower = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect()
        };
        Got {
            status: resp.status,
            headers: lower(resp.headers),
            body: resp.body,
            trailers: lower(resp.trailers),
        }
    }
}

/// HTTP/2 in cleartext (prior knowledge), by the h2 crate.
pub struct Http2;

impl Protocol for Http2 {
    const NAME: &'static str = "HTTP/2";

    fn exchange(addr: SocketAddr, ask: &Ask) -> Got {
        let mut c = H2Client::connect(addr);
        let mut req = Request::builder()
            .method(ask.method)
            .uri(format!("http://{}{}", ask.authority, ask.path));
        for (n, v) in &ask.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        if ask.length && !ask.body.is_empty() {
            req = req.header("content-length", ask.body.len().to_string());
        }
        let req = req.body(()).expect("request");
        let trailers = (!ask.trailers.is_empty()).then(|| {
            let mut t = HeaderMap::new();
            for (n, v) in &ask.trailers {
                t.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            t
        });
        let r = c.request(req, &ask.body, trailers).expect("an answer");
        let fields = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_string(), v)
                })
                .collect()
        };
        Got {
            status: r.status,
            headers: fields(&r.headers),
            body: r.body,
            trailers: r.trailers.as_ref().map(fields).unwrap_or_default(),
        }
    }
}
