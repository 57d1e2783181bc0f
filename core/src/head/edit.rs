//! Header edits a route or cluster makes (`request_headers`, `response_headers`): fields added,
//! set (every field of the name replaced) or removed, with values that may name a few
//! variables of the request. Compiled once per config; applied while a head is encoded, so
//! nothing is copied or allocated for a request whose route edits nothing.

use std::net::SocketAddr;

pub use super::FieldSink;

/// A variable a value may name: `${client_ip}` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's IP address.
    ClientIp,
    /// The client's SPIFFE ID (mTLS), or nothing.
    Identity,
    /// The request id (`request_id`), or nothing.
    RequestId,
    /// The route's name.
    Route,
    /// The cluster's name.
    Cluster,
    /// The endpoint that answered (`host:port`), on answers only; nothing on requests.
    Upstream,
}

impl Var {
    /// The variables and their names in a value.
    pub const ALL: [(&'static str, Var); 6] = [
        ("client_ip", Var::ClientIp),
        ("client_identity", Var::Identity),
        ("request_id", Var::RequestId),
        ("route", Var::Route),
        ("cluster", Var::Cluster),
        ("upstream", Var::Upstream),
    ];
}

/// A value: literal bytes and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(Box<[u8]>),
    Var(Var),
}

/// A field value as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

impl Template {
    /// Reads a value: `${name}` names a variable, `$$` is a `$`. `Err` says what is wrong.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1)) {
                (b'$', Some(b'$')) => {
                    text.push(b'$');
                    i += 2;
                }
                (b'$', Some(b'{')) => {
                    let Some(end) = s[i + 2..].find('}') else {
                        return Err("`${` without its `}`".into());
                    };
                    let name = &s[i + 2..i + 2 + end];
                    let Some((_, v)) = Var::ALL.iter().find(|(n, _)| *n == name) else {
                        let known: Vec<&str> = Var::ALL.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "unknown variable `{name}`; expected one of: {}",
                            known.join(", ")
                        ));
                    };
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text).into()));
                    }
                    parts.push(Part::Var(*v));
                    i += 3 + end;
                }
                (b'$', _) => return Err("a `$` starts `${variable}`; write `$$` for a `$`".into()),
                (c, _) => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text.into()));
        }
        Ok(Template(parts))
    }

    /// Whether it names a variable (and so must be written per request).
    pub fn uses(&self, v: Var) -> bool {
        self.0.contains(&Part::Var(v))
    }

    /// Writes the value for this request. Bytes a variable brings that could end a field
    /// (CR, LF, NUL) are left out, whatever their source.
    pub fn write(&self, vars: &Vars<'_>, out: &mut Vec<u8>) {
        let start = out.len();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.extend_from_slice(t),
                Part::Var(v) => vars.write(*v, out),
            }
        }
        // A variable that is empty here may leave spaces at either end, which a field value
        // may not have (HTTP/2 peers refuse them): trimmed.
        while out.len() > start && matches!(out.last(), Some(b' ' | b'\t')) {
            out.pop();
        }
        let lead = out[start..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        if lead > 0 {
            out.drain(start..start + lead);
        }
    }
}

/// What variables stand for in one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    pub client_ip: &'a [u8],
    pub identity: Option<&'a str>,
    pub request_id: Option<&'a [u8]>,
    pub route: &'a str,
    pub cluster: &'a str,
    pub upstream: Option<SocketAddr>,
}

impl Vars<'_> {
    fn write(&self, v: Var, out: &mut Vec<u8>) {
        let safe = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend(
                b.iter()
                    .copied()
                    .filter(|&c| c != b'\r' && c != b'\n' && c != 0),
            );
        };
        match v {
            Var::ClientIp => safe(out, self.client_ip),
            Var::Identity => safe(out, self.identity.unwrap_or_default().as_bytes()),
            Var::RequestId => safe(out, self.request_id.unwrap_or_default()),
            Var::Route => safe(out, self.route.as_bytes()),
            Var::Cluster => safe(out, self.cluster.as_bytes()),
            Var::Upstream => {
                if let Some(a) = self.upstream {
                    use std::io::Write as _;
                    let _ = write!(out, "{a}");
                }
            }
        }
    }
}

/// One route's or cluster's edits of a head's fields (names lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Fields added after those that came.
    pub add: Vec<(Box<[u8]>, Template)>,
    /// Fields that replace every field of their name.
    pub set: Vec<(Box<[u8]>, Template)>,
    /// Names whose fields are removed.
    pub remove: Vec<Box<[u8]>>,
}

impl HeaderEdits {
    /// Whether a field that came with this name is left out (set or removed).
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.set
            .iter()
            .map(|(n, _)| n)
            .chain(&self.remove)
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Calls `field` with each field the edits write: those set, then those added.
    pub fn fields(&self, vars: &Vars<'_>, field: &mut FieldSink<'_>) {
        for (name, value) in self.set.iter().chain(&self.add) {
            field(name, &|out| value.write(vars, out));
        }
    }
}

/// `request_id`: the field that carries a request's id, whether a client's id is kept, and
/// whether the answer carries it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdSpec {
    /// The field's name, lowercase (`x-request-id`).
    pub header: Box<[u8]>,
    /// Keep the id a client sent (when it is a sane one: 1 to 128 visible characters);
    /// otherwise a new one replaces it.
    pub trust_client: bool,
    /// Send the id back on the answer.
    pub echo: bool,
}

/// Longest request id kept from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether a client's id may be kept: 1 to 128 visible ASCII characters.
pub fn sane_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Writes a new request id: a random (version 4) UUID, 36 characters.
pub fn new_request_id(rng: &mut crate::rng::Rng, out: &mut [u8; 36]) {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 15)];
        o += 2;
    }
}

/// The edits of a request forwarded upstream: the route's, then the cluster's, and the request
/// id's field (which replaces any the client sent under that name).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEdits<'a> {
    pub route: Option<&'a HeaderEdits>,
    pub cluster: Option<&'a HeaderEdits>,
    pub vars: Vars<'a>,
    /// The request id's field name and value.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// The edits of an answer relayed to the client: the cluster's, then the route's (inner to
/// outer), and the request id echoed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseEdits<'a> {
    pub cluster: Option<&'a HeaderEdits>,
    pub route: Option<&'a HeaderEdits>,
    pub vars: Vars<'a>,
    /// The request id's field name and value, when it is echoed.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
    /// The route's CORS policy, and the request's origin when the policy allows it.
    pub cors: Option<(&'a crate::cors::Cors, Option<&'a [u8]>)>,
    /// What the answer's coding changes (set once its head is judged).
    pub coding: Option<crate::compress::Coding<'a>>,
}

/// Both directions' edits share this: a field that came is dropped when an edit sets or
/// removes its name, or when it carries the request id's name.
fn drops_any(edits: [Option<&HeaderEdits>; 2], id: Option<(&[u8], &[u8])>, name: &[u8]) -> bool {
    edits.iter().flatten().any(|e| e.drops(name))
        || id.is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn fields_of(
    edits: [Option<&HeaderEdits>; 2],
    vars: &Vars<'_>,
    id: Option<(&[u8], &[u8])>,
    field: &mut FieldSink<'_>,
) {
    for e in edits.iter().flatten() {
        e.fields(vars, field);
    }
    if let Some((name, value)) = id {
        field(name, &|out| out.extend_from_slice(value));
    }
}

impl RequestEdits<'_> {
    /// Whether a field the client sent is left out.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        drops_any([self.route, self.cluster], self.request_id, name)
    }

    /// The fields the edits write, in order.
    pub fn fields(&self, field: &mut FieldSink<'_>) {
        fields_of(
            [self.route, self.cluster],
            &self.vars,
            self.request_id,
            field,
        );
    }
}

impl ResponseEdits<'_> {
    /// Whether a field the upstream sent is left out (a route with CORS writes the
    /// `Access-Control-*` fields itself).
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        drops_any([self.cluster, self.route], self.request_id, name)
            || self.cors.is_some() && crate::cors::is_cors_field(name)
            || self.coding.is_some_and(|c| c.drops(name))
    }

    /// The fields the edits write, in order.
    pub fn fields(&self, field: &mut FieldSink<'_>) {
        fields_of(
            [self.cluster, self.route],
            &self.vars,
            self.request_id,
            field,
        );
        match self.cors {
            Some((cors, Some(origin))) => cors.actual_fields(origin, field),
            // The answer differs by origin either way: caches must know.
            Some((_, None)) => field(b"vary", &|out| out.extend_from_slice(b"Origin")),
            None => {}
        }
        if let Some(c) = &self.coding {
            c.fields(field);
        }
    }
}

/// Names no edit may touch: the hop-by-hop and framing fields (the proxy writes framing
/// itself), the authority (rewrites change it), and the fields the proxy writes for the next
/// hop or for the client, which an edit would duplicate or forge.
pub fn reserved(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "traceparent",
        "b3",
        "ringmesh-deadline-ms",
        "grpc-timeout",
        "ringmesh-client-identity",
        "ringmesh-error",
        "ringmesh-original-protocol",
    ];
    name.starts_with(':') || RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Whether `name` is a field name (RFC 9110 token).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a literal value may go in a field: visible ASCII, spaces and tabs (no CR, LF or
/// NUL), no surrounding whitespace.
pub fn valid_value(v: &str) -> bool {
    v.len() <= 4096 && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) && v.trim() == v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_read_variables_and_dollars() {
        let t = Template::parse("id=${request_id}; $$5 from ${client_ip}").unwrap();
        let vars = Vars {
            client_ip: b"10.0.0.1",
            request_id: Some(b"abc"),
            ..Vars::default()
        };
        let mut out = Vec::new();
        t.write(&vars, &mut out);
        assert_eq!(out, b"id=abc; $5 from 10.0.0.1");
        assert!(
            Template::parse("${nope}")
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(Template::parse("${route").is_err());
        assert!(Template::parse("5$").is_err());
        let t = Template::parse("${client_identity} ${client_ip} ").unwrap();
        let mut out = b"x".to_vec();
        t.write(&vars, &mut out);
        assert_eq!(
            out, b"x10.0.0.1",
            "no surrounding spaces when a variable is empty"
        );
    }

    #[test]
    fn variables_cannot_end_a_field() {
        let t = Template::parse("${client_identity}").unwrap();
        let vars = Vars {
            identity: Some("spiffe://a\r\nx-evil: 1"),
            ..Vars::default()
        };
        let mut out = Vec::new();
        t.write(&vars, &mut out);
        assert_eq!(out, b"spiffe://ax-evil: 1");
    }

    #[test]
    fn request_ids_are_uuids_and_clients_ids_are_checked() {
        let mut rng = crate::rng::Rng::new(3);
        let mut id = [0u8; 36];
        new_request_id(&mut rng, &mut id);
        let s = std::str::from_utf8(&id).unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!("89ab".contains(&s[19..20]));
        assert_eq!(s.matches('-').count(), 4);
        assert!(sane_request_id(b"abc-123") && !sane_request_id(b"") && !sane_request_id(b"a b"));
        assert!(!sane_request_id(&[b'a'; 129]));
    }

    #[test]
    fn edits_drop_what_they_set_or_remove() {
        let e = HeaderEdits {
            set: vec![(Box::from(&b"x-a"[..]), Template::parse("1").unwrap())],
            remove: vec![Box::from(&b"x-b"[..])],
            ..Default::default()
        };
        assert!(e.drops(b"X-A") && e.drops(b"x-b") && !e.drops(b"x-c"));
        assert!(reserved("Content-Length") && reserved(":path") && !reserved("x-a"));
        assert!(valid_name("x-a") && !valid_name("x a") && !valid_name(""));
        assert!(valid_value("a b") && !valid_value("a\r\nb") && !valid_value(" a"));
    }
}
