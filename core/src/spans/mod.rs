//! Span export: one span per request forwarded, sent to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf).
//!
//! The access log's design: each worker encodes its spans into its own buffer (no system call,
//! no lock, one allocation per batch) and hands the buffer over when it passes [`FLUSH_AT`] or at
//! the worker's next sweeper tick (200 ms). One exporter thread per process posts them, several
//! batches to a request. Past [`QUEUE`] batches waiting (a collector down or slow), a worker
//! drops its batch and counts its spans as dropped; a post that fails counts its spans as
//! failed. Memory is bounded by the queue, whatever the collector does.
//!
//! The span's ids are the ones the proxy propagates (`trace`): its span id is the one sent
//! upstream in `traceparent`, its parent the one that came in, so the application's spans join
//! the proxy's in one trace.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::rng::Rng;
use crate::trace::{B3Out, Trace};

pub mod encode;
mod post;

pub use encode::{Kind, SpanData};

/// Where spans go and which are sent (`tracing` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSpec {
    /// The collector's traces endpoint.
    pub endpoint: Endpoint,
    /// Share of new traces sampled, 0 to 1 (a trace that came in keeps its own decision).
    pub sample: f64,
    /// `service.name` of the spans' resource.
    pub service: String,
    /// `service.instance.id`: the host's name, or empty.
    pub instance: String,
}

/// An `http://host:port/path` URL, split for the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, resolved by the exporter thread at each connection.
    pub connect: String,
    /// The `Host` field.
    pub host: String,
    /// The request target.
    pub path: String,
}

impl Endpoint {
    /// Reads an `http://` URL; the path defaults to OTLP's `/v1/traces`. `Err` says what is
    /// wrong, for the config's error message.
    pub fn parse(url: &str) -> Result<Endpoint, &'static str> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err("expected an http:// URL (the collector's OTLP/HTTP endpoint)");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            "/v1/traces"
        } else {
            path
        };
        let bad = |b: u8| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'@';
        if authority.is_empty() || authority.bytes().any(bad) || path.bytes().any(bad) {
            return Err("expected http://HOST[:PORT][/PATH] without user info or fragment");
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        if has_port {
            let port = &authority[authority.rfind(':').map_or(0, |i| i + 1)..];
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err("the port must be 1 to 65535");
            }
        }
        let connect = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint {
            connect,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

impl ExportSpec {
    /// The sampling rate as a threshold on 32 random bits; `None`: every new trace.
    fn threshold(&self) -> Option<u32> {
        (self.sample < 1.0).then(|| (self.sample.max(0.0) * f64::from(u32::MAX)) as u32)
    }
}

/// A batch is handed over once it holds this much.
pub const FLUSH_AT: usize = 64 * 1024;

/// Batches waiting for the exporter, over all workers: past this, a worker drops its batch.
pub const QUEUE: usize = 32;

/// One post carries at most this much (several batches).
pub const MAX_POST: usize = 1 << 20;

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans accepted by a collector, dropped by a worker (queue full), and lost to failed posts.
pub fn counts() -> [(&'static str, u64); 3] {
    [
        ("exported", EXPORTED.load(Ordering::Relaxed)),
        ("dropped", DROPPED.load(Ordering::Relaxed)),
        ("failed", FAILED.load(Ordering::Relaxed)),
    ]
}

struct Batch {
    export: Arc<ExportSpec>,
    data: Vec<u8>,
    spans: u64,
}

static EXPORTER: OnceLock<flume::Sender<Batch>> = OnceLock::new();

fn exporter() -> &'static flume::Sender<Batch> {
    EXPORTER.get_or_init(|| {
        let (tx, rx) = flume::bounded(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("ringmesh-spans".into())
            .spawn(move || post::run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "span export: cannot start the exporter thread");
        }
        tx
    })
}

/// One worker's span buffer.
#[derive(Debug, Default)]
pub struct SpanSink {
    export: RefCell<Option<Arc<ExportSpec>>>,
    threshold: Cell<Option<u32>>,
    /// Spans not handed over yet.
    batch: crate::batch::Batch,
}

impl SpanSink {
    /// Takes the export of a new config: what is buffered for another goes out first.
    pub fn set(&self, export: Option<Arc<ExportSpec>>) {
        let same = match (&*self.export.borrow(), &export) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.flush();
        self.threshold
            .set(export.as_ref().and_then(|e| e.threshold()));
        *self.export.borrow_mut() = export;
    }

    /// Whether spans are exported at all.
    #[inline]
    pub fn on(&self) -> bool {
        self.export.borrow().is_some()
    }

    /// Decides whether the request of `trace` is exported. A trace the proxy starts is
    /// sampled at the configured rate (and its flags say so downstream); one that came in
    /// keeps the caller's decision.
    #[inline]
    pub fn sample(&self, trace: &mut Trace, rng: &mut Rng) -> bool {
        if !self.on() {
            return false;
        }
        let started_here = trace.parent_id.is_none() && !matches!(trace.b3, B3Out::SamplingOnly(_));
        if started_here {
            if let Some(t) = self.threshold.get() {
                trace.flags = u8::from((rng.next_u64() as u32) < t);
            }
        }
        trace.flags & 1 == 1
    }

    /// Appends one span; hands the batch over when it is big enough.
    pub fn record(&self, s: &SpanData<'_>) {
        if self.batch.push(FLUSH_AT, |buf| encode::span(buf, s)) {
            self.flush();
        }
    }

    /// Hands what is buffered to the exporter thread.
    pub fn flush(&self) {
        let Some((data, spans)) = self.batch.take() else {
            return;
        };
        let Some(export) = self.export.borrow().clone() else {
            return;
        };
        if exporter()
            .try_send(Batch {
                export,
                data,
                spans,
            })
            .is_err()
        {
            DROPPED.fetch_add(spans, Ordering::Relaxed);
        }
    }
}

/// How long the exporter waits on a collector: to connect, and for each read or write.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.connect, "127.0.0.1:4318");
        assert_eq!(e.path, "/v1/traces");
        let e = Endpoint::parse("http://collector/otlp/v1/traces").unwrap();
        assert_eq!(
            (e.connect.as_str(), e.host.as_str()),
            ("collector:80", "collector")
        );
        assert_eq!(e.path, "/otlp/v1/traces");
        let e = Endpoint::parse("http://[::1]:4318/").unwrap();
        assert_eq!(e.connect, "[::1]:4318");
        let e = Endpoint::parse("http://[::1]/").unwrap();
        assert_eq!(e.connect, "[::1]:80");
        for bad in [
            "https://c:4318",
            "c:4318",
            "http://",
            "http://u@c:1/",
            "http://c:0/",
            "http://c:99999/",
            "http://c:1/a b",
            "http://c:1/\r\nX: y",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec(sample: f64) -> Arc<ExportSpec> {
        Arc::new(ExportSpec {
            endpoint: Endpoint::parse("http://127.0.0.1:9").unwrap(),
            sample,
            service: "s".into(),
            instance: String::new(),
        })
    }

    #[test]
    fn new_traces_are_sampled_at_the_rate_and_others_keep_theirs() {
        let sink = SpanSink::default();
        let mut rng = Rng::new(1);
        let mut t = Trace::continue_or_start(None, None, &mut rng);
        assert!(!sink.sample(&mut t, &mut rng), "off: nothing exported");
        assert_eq!(t.flags, 1, "off: flags untouched");
        sink.set(Some(spec(0.25)));
        let n = (0..4000)
            .filter(|_| {
                let mut t = Trace::continue_or_start(None, None, &mut rng);
                let s = sink.sample(&mut t, &mut rng);
                assert_eq!(s, t.flags == 1);
                s
            })
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000 at 25%");
        sink.set(Some(spec(0.0)));
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = Trace::continue_or_start(Some(tp), None, &mut rng);
        assert!(sink.sample(&mut t, &mut rng), "the caller sampled it");
        let tp0 = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut t = Trace::continue_or_start(Some(tp0), None, &mut rng);
        assert!(!sink.sample(&mut t, &mut rng), "the caller did not");
    }
}
