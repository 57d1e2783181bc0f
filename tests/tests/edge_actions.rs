//! What a route does besides choosing a cluster, on HTTP/1.1 and HTTP/2 alike: header edits
//! with variables (route and cluster, requests and answers), request ids (made, replaced,
//! trusted, echoed, logged), redirects (followed by curl) and direct answers; and the configs
//! that are refused, naming the field.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ringmesh_tests::h2::H2Client;
use ringmesh_tests::*;

fn config(up: SocketAddr, log: &std::path::Path) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    access_log: {log}
    request_id: {{ echo: true }}
    routes:
      - name: api
        match: {{ path_prefix: /api/ }}
        cluster: up
        request_headers:
          set: {{ x-client: \"${{client_ip}}\", x-replaced: new }}
          add: {{ x-route: \"${{route}} to ${{cluster}} ($$1)\" }}
          remove: [ cookie ]
        response_headers:
          set: {{ x-answered-by: \"${{upstream}}\" }}
          remove: [ server ]
      - name: trusted
        match: {{ path_prefix: /trusted/ }}
        cluster: up
        request_id: {{ header: x-trace-me, trust_client: true, echo: true }}
      - {{ name: healthz, match: {{ path: /healthz }}, direct_response: {{ status: 200, body: \"ok\\n\" }},
          response_headers: {{ add: {{ x-health: \"${{route}}\" }} }} }}
      - {{ name: json, match: {{ path: /status.json }}, direct_response: {{ status: 200, body: \"{{}}\" }},
          response_headers: {{ set: {{ content-type: application/json }} }} }}
      - {{ name: maintenance, match: {{ path_prefix: /down/ }}, direct_response: {{ status: 503, body: \"back soon\" }} }}
      - {{ name: moved, match: {{ path_prefix: /old/ }}, redirect: {{ prefix: /new/, code: 308 }} }}
      - {{ name: gone, match: {{ path_prefix: /gone }}, redirect: {{ path: /healthz, code: 302, strip_query: true }} }}
      - {{ name: secure, match: {{ host: plain.test }}, redirect: {{ scheme: https, host: \"secure.test:8443\" }} }}
      - {{ name: broken, match: {{ path_prefix: /broken/ }}, cluster: gone,
          response_headers: {{ add: {{ x-route-edit: \"${{route}}\" }} }} }}
      - {{ name: rest, match: {{ path_prefix: / }}, cluster: up }}
clusters:
  - {{ name: gone, endpoints: [ {{ addr: {gone} }} ] }}
  - name: up
    endpoints: [ {{ addr: {up} }} ]
    request_headers: {{ add: {{ x-cluster: \"${{cluster}}\", x-cluster-client: \"${{client_ip}} ${{client_identity}}\" }} }}
    response_headers: {{ add: {{ x-cluster-answer: yes }} }}
",
        log = log.display(),
        gone = free_port(),
    )
}

fn upstream() -> Upstream {
    Upstream::http(|_| {
        Resp::new(200, "up")
            .header("server", "secret/1.0")
            .header("x-upstream", "1")
    })
}

/// `curl ARGS URL`: (status, headers as lines, body).
fn curl(args: &[&str], url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn headers_are_edited_both_ways_on_both_protocols() {
    if tool(&["curl"]).is_none() {
        return;
    }
    let up = upstream();
    let dir = std::env::temp_dir().join(format!("ringmesh-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let p = TestProxy::start(&config(up.addr, &log), 1);
    let url = format!("http://{}/api/x?q=1", p.edge());
    for (proto, flag) in [
        ("HTTP/1.1", "--http1.1"),
        ("HTTP/2", "--http2-prior-knowledge"),
    ] {
        let before = up.requests().len();
        let (status, head, body) = curl(
            &[
                flag,
                "-H",
                "cookie: a=1",
                "-H",
                "x-replaced: old",
                "-H",
                "x-request-id: mine",
            ],
            &url,
        );
        assert_eq!((status, body.as_str()), (200, "up"), "{proto}: {head}");
        let seen = &up.requests()[before];
        assert_eq!(seen.header("x-client"), Some("127.0.0.1"), "{proto}");
        assert_eq!(
            seen.header("x-replaced"),
            Some("new"),
            "{proto}: set replaces"
        );
        assert_eq!(
            seen.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-replaced"))
                .count(),
            1,
            "{proto}"
        );
        assert_eq!(seen.header("x-route"), Some("api to up ($1)"), "{proto}");
        assert_eq!(
            seen.header("x-cluster"),
            Some("up"),
            "{proto}: the cluster's edits too"
        );
        assert_eq!(
            seen.header("x-cluster-client"),
            Some("127.0.0.1"),
            "{proto}: a cluster's variables, an empty one trimmed"
        );
        assert_eq!(seen.header("cookie"), None, "{proto}: removed");
        // An untrusted id is replaced by a new one, sent up and echoed.
        let id = seen.header("x-request-id").expect("request id").to_string();
        assert_ne!(id, "mine", "{proto}");
        assert_eq!(id.len(), 36, "{proto}: a UUID");
        assert_eq!(
            field(&head, "x-request-id"),
            Some(id.as_str()),
            "{proto}: echoed"
        );
        assert_eq!(
            field(&head, "server"),
            None,
            "{proto}: removed from the answer"
        );
        assert_eq!(field(&head, "x-upstream"), Some("1"), "{proto}");
        assert_eq!(
            field(&head, "x-answered-by"),
            Some(up.addr.to_string().as_str()),
            "{proto}"
        );
        assert_eq!(field(&head, "x-cluster-answer"), Some("yes"), "{proto}");
        // The same id in the access log.
        assert!(
            eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("\"request_id\":\"{id}\""))),
            "{proto}: the id is logged"
        );
    }
    // A trusted id is kept; an insane one is replaced.
    let (_, head, _) = curl(
        &["-H", "x-trace-me: abc-123"],
        &format!("http://{}/trusted/x", p.edge()),
    );
    assert_eq!(field(&head, "x-trace-me"), Some("abc-123"));
    assert_eq!(
        up.requests().last().unwrap().header("x-trace-me"),
        Some("abc-123")
    );
    let long = "a".repeat(200);
    let (_, head, _) = curl(
        &["-H", &format!("x-trace-me: {long}")],
        &format!("http://{}/trusted/x", p.edge()),
    );
    assert_eq!(field(&head, "x-trace-me").map(str::len), Some(36));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn routes_answer_themselves_with_redirects_and_fixed_answers() {
    if tool(&["curl"]).is_none() {
        return;
    }
    let up = upstream();
    let dir = std::env::temp_dir().join(format!("ringmesh-edge-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = TestProxy::start(&config(up.addr, &dir.join("a.log")), 1);
    let base = format!("http://{}", p.edge());
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, head, body) = curl(&[flag], &format!("{base}/healthz"));
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{flag}");
        assert_eq!(field(&head, "x-health"), Some("healthz"), "{flag}");
        assert_eq!(
            field(&head, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(
            field(&head, "x-request-id").is_some(),
            "{flag}: echoed on own answers"
        );
        let (status, _, body) = curl(&[flag], &format!("{base}/down/x"));
        assert_eq!((status, body.as_str()), (503, "back soon"), "{flag}");
        // The proxy's own error answer on a route carries the route's edits and request id.
        let (status, head, _) = curl(&[flag], &format!("{base}/broken/x"));
        assert_eq!(status, 502, "{flag}: {head}");
        assert_eq!(
            field(&head, "ringmesh-error"),
            Some("connect-failed"),
            "{head}"
        );
        assert_eq!(
            field(&head, "x-route-edit"),
            Some("broken"),
            "{flag}: {head}"
        );
        assert!(field(&head, "x-request-id").is_some(), "{flag}: {head}");
        // A prefix redirect keeps the rest of the path and the query.
        let (status, head, _) = curl(&[flag], &format!("{base}/old/a/b?x=1"));
        assert_eq!(status, 308, "{flag}");
        assert_eq!(
            field(&head, "location"),
            Some(format!("http://{}/new/a/b?x=1", p.edge()).as_str()),
            "{flag}"
        );
        // To a route that answers itself, the query dropped.
        let (status, head, _) = curl(&[flag], &format!("{base}/gone?secret=1"));
        assert_eq!(status, 302, "{flag}");
        assert_eq!(
            field(&head, "location"),
            Some(format!("http://{}/healthz", p.edge()).as_str()),
            "{flag}"
        );
        // Scheme and host: HTTP to HTTPS.
        let (status, head, _) = curl(
            &[flag, "-H", "host: plain.test"],
            &format!("{base}/pay?x=2"),
        );
        assert_eq!(status, 301, "{flag}");
        assert_eq!(
            field(&head, "location"),
            Some("https://secure.test:8443/pay?x=2"),
            "{flag}"
        );
    }
    // curl follows a redirect to the route that answers itself (HTTP/1.1: curl 7.88 does not
    // follow redirects over prior-knowledge HTTP/2 at all).
    let out = Command::new("curl")
        .args([
            "-s",
            "-L",
            "-w",
            "%{http_code} %{url_effective}",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{base}/gone?secret=1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("200 http://{}/healthz", p.edge())
    );
    // `set` replaces the route's own fields too.
    let (_, head, body) = curl(&[], &format!("{base}/status.json"));
    assert_eq!(body, "{}");
    assert_eq!(head.matches("content-type:").count(), 1, "{head}");
    assert_eq!(field(&head, "content-type"), Some("application/json"));
    // A redirect with no host to go to is refused, not sent as `https:///...`.
    let mut c = Client::connect(p.edge());
    c.send(b"GET /gone HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.header("location").is_none(), "{r:?}");
    // HEAD: the length of the body, and no body.
    let mut c = Client::connect(p.edge());
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
    assert_eq!(
        c.get("/healthz").body,
        b"ok\n",
        "nothing was left on the connection"
    );
    let mut h2 = H2Client::connect(p.edge());
    let head = http::Request::head("http://a.test/healthz")
        .body(())
        .unwrap();
    let r = h2.request(head, b"", None).expect("h2 HEAD");
    assert_eq!((r.status, r.body.len()), (200, 0));
    // A POST with a body to a route that answers itself: the connection goes on.
    let mut c = Client::connect(p.edge());
    c.send(b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.response(false).status, 200);
    assert_eq!(
        c.get("/healthz").status,
        200,
        "the body was read and dropped"
    );
    // Counted in the route's series.
    let m = p.admin("/metrics").text();
    assert!(
        m.lines().any(|l| l.starts_with(
            "ringmesh_requests_total{listener=\"edge\",route=\"healthz\",cluster=\"\",code=\"200\"}"
        )),
        "{m}"
    );
    assert_eq!(up.requests().len(), 0, "nothing went upstream");
    // Over an HTTP/2 client of our own too.
    let mut h2 = H2Client::connect(p.edge());
    let r = h2.get("/old/z").expect("h2");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://a.test/new/z"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn edits_of_the_proxys_own_fields_and_ambiguous_routes_are_refused_naming_the_field() {
    let base = "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - ";
    let tail = "\nclusters:\n  - { name: up, endpoints: [ { addr: 127.0.0.1:9 } ] }\n";
    for (route, path, why) in [
        (
            "{ match: { path_prefix: / }, cluster: up, request_headers: { set: { content-length: \"1\" } } }",
            "routes[0].request_headers.set.content-length",
            "cannot be edited",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, request_headers: { remove: [ x-forwarded-for ] } }",
            "routes[0].request_headers.remove[0]",
            "cannot be edited",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, response_headers: { add: { \"bad name\": x } } }",
            "routes[0].response_headers.add.bad name",
            "not a field name",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, request_headers: { add: { x-a: \"${nope}\" } } }",
            "routes[0].request_headers.add.x-a",
            "unknown variable",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, request_headers: { add: { x-a: \"${upstream}\" } } }",
            "routes[0].request_headers.add.x-a",
            "answers only",
        ),
        (
            "{ match: { path: /a }, redirect: { prefix: /b } }",
            "routes[0].redirect.prefix",
            "path_prefix",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, request_headers: { add: { x-a: \"a\\r\\nb: c\" } } }",
            "routes[0].request_headers.add.x-a",
            "visible ASCII",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, redirect: { code: 301 } }",
            "routes[0].redirect",
            "no `cluster` or `split`",
        ),
        (
            "{ match: { path_prefix: / }, redirect: { code: 200 } }",
            "routes[0].redirect.code",
            "301, 302",
        ),
        (
            "{ match: { path_prefix: / }, redirect: { path: \"x\" } }",
            "routes[0].redirect.path",
            "starting with `/`",
        ),
        (
            "{ match: { path_prefix: / }, direct_response: { status: 99 } }",
            "routes[0].direct_response.status",
            "200 to 599",
        ),
        (
            "{ match: { path_prefix: / }, direct_response: { status: 200 }, redirect: { code: 301 } }",
            "routes[0].direct_response",
            "one of",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, request_id: { header: host } }",
            "routes[0].request_id.header",
            "cannot be edited",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, fault: { header: x-f } }",
            "routes[0].fault",
            "needs `delay`, `abort`",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, fault: { abort: { grpc_status: 0 } } }",
            "routes[0].fault.abort.grpc_status",
            "1 to 16",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, fault: { delay: { fixed: 2h } } }",
            "routes[0].fault.delay.fixed",
            "at most 1h",
        ),
        (
            "{ match: { path_prefix: / }, cluster: up, fault: { abort: { percent: 150% } } }",
            "routes[0].fault.abort.percent",
            "",
        ),
    ] {
        let cfg = format!("{base}{route}{tail}");
        let errs = ringmesh_control::config::Config::parse(&cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted: {route}"));
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|e| e.contains(path) && e.contains(why)),
            "{route}: {text:?}"
        );
    }
}

#[test]
fn rewrites_change_the_path_and_authority_sent_and_the_log_shows_both() {
    let up = upstream();
    let h2up = ringmesh_tests::h2::H2Upstream::start(None, |_, _| {
        ringmesh_tests::h2::H2Action::Answer(ringmesh_tests::h2::H2Answer::ok("h2"))
    });
    let dir = std::env::temp_dir().join(format!("ringmesh-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let cfg = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    access_log: {log}
    routes:
      - {{ name: v1, match: {{ path_prefix: /v1/ }}, cluster: up, rewrite: {{ prefix: /v2/, host: internal.test }} }}
      - {{ name: v1-bare, match: {{ path_prefix: /v1 }}, cluster: up, rewrite: {{ prefix: /public/v1 }} }}
      - {{ name: users, match: {{ path_prefix: /users/ }}, cluster: up,
          rewrite: {{ regex: \"^/users/([0-9]+)/(.*)$\", substitution: \"/u/$1?$2\", host_from_endpoint: true }} }}
      - {{ name: grpcish, match: {{ path_prefix: /h2/ }}, cluster: h2up,
          rewrite: {{ prefix: /svc/ }}, request_headers: {{ add: {{ x-via: \"${{route}}\" }} }} }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: {up} }} ] }}
  - {{ name: h2up, protocol: http2, endpoints: [ {{ addr: {h2} }} ] }}
",
        log = log.display(),
        up = up.addr,
        h2 = h2up.addr
    );
    let p = TestProxy::start(&cfg, 1);
    // HTTP/1.1 upstream, from an HTTP/1.1 client and an HTTP/2 one.
    let mut c = Client::connect(p.edge());
    assert_eq!(c.get("/v1/items?x=1").status, 200);
    // A rewrite that would make a dot segment (`/public/v1` joined to `../`) is refused.
    let before = up.requests().len();
    for path in ["/v1..", "/v1../x"] {
        let r = Client::connect(p.edge()).get(path);
        let got = (r.status, r.header("ringmesh-error"));
        assert_eq!(got, (400, Some("bad-path")), "{path}");
    }
    assert_eq!(up.requests().len(), before, "nothing went upstream");
    let mut c = Client::connect(p.edge());
    let mut h2 = H2Client::connect(p.edge());
    assert_eq!(h2.get("/users/42/profile?full=1").expect("h2").status, 200);
    let seen = up.requests();
    assert_eq!(seen[0].path, "/v2/items?x=1");
    assert_eq!(seen[0].header("host"), Some("internal.test"));
    assert_eq!(
        seen[0]
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count(),
        1,
        "one Host"
    );
    assert_eq!(
        seen[1].path, "/u/42%3Fprofile?full=1",
        "a `?` made by the substitution is encoded"
    );
    assert_eq!(seen[1].header("host"), Some(up.addr.to_string().as_str()));
    // HTTP/2 upstream: :path and the edits.
    assert_eq!(c.get("/h2/Echo?q").status, 200);
    let s = h2up.seen.lock().unwrap()[0].clone();
    assert_eq!(s.path, "/svc/Echo?q");
    assert_eq!(
        s.headers.get("x-via").and_then(|v| v.to_str().ok()),
        Some("grpcish")
    );
    // The access log has what the client asked and what went upstream.
    assert!(eventually(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("\"path\":\"/v1/items?x=1\"")
            && text.contains("\"upstream_path\":\"/v2/items?x=1\"")
    }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rewrites_that_cannot_work_are_refused_naming_the_field() {
    let base = "admin: 127.0.0.1:0\nlisteners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - ";
    let tail = "\nclusters:\n  - { name: up, endpoints: [ { addr: 127.0.0.1:9 } ] }\n";
    let big = format!("({}){{100}}", "[a-z]{1,100}");
    for (route, path, why) in [
        ("{ match: { path: /a }, cluster: up, rewrite: { prefix: /b } }".to_string(), "routes[0].rewrite.prefix", "path_prefix"),
        ("{ match: { path_prefix: /a }, cluster: up, rewrite: { regex: \"(\", substitution: x } }".to_string(), "routes[0].rewrite.regex", "regex"),
        (format!("{{ match: {{ path_prefix: /a }}, cluster: up, rewrite: {{ regex: \"{big}\", substitution: x }} }}"), "routes[0].rewrite.regex", "KiB"),
        ("{ match: { path_prefix: /a }, cluster: up, rewrite: { regex: a } }".to_string(), "routes[0].rewrite.substitution", "required"),
        ("{ match: { path_prefix: /a }, cluster: up, rewrite: { prefix: /b, regex: a, substitution: b } }".to_string(), "routes[0].rewrite.regex", "not both"),
        ("{ match: { path_prefix: /a }, direct_response: { status: 200 }, rewrite: { prefix: /b } }".to_string(), "routes[0].rewrite", "answers itself"),
        ("{ match: { path_prefix: /a }, cluster: up, rewrite: { host: \"a b\" } }".to_string(), "routes[0].rewrite.host", "host name"),
    ] {
        let cfg = format!("{base}{route}{tail}");
        let errs = ringmesh_control::config::Config::parse(&cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted: {route}"));
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|e| e.contains(path) && e.contains(why)), "{route}: {text:?}");
    }
}

#[test]
fn faults_delay_and_abort_a_share_of_requests_and_are_counted() {
    let up = upstream();
    let cfg = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: chaos, match: {{ path_prefix: /chaos }}, cluster: up,
          fault: {{ abort: {{ status: 503, grpc_status: 14 }}, header: x-chaos }} }}
      - {{ name: half, match: {{ path_prefix: /half }}, cluster: up, fault: {{ abort: {{ status: 500, percent: 50% }} }} }}
      - {{ name: slow, match: {{ path_prefix: /slow }}, cluster: up, fault: {{ delay: {{ fixed: 300ms }} }} }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    let p = TestProxy::start(&cfg, 1);
    let mut c = Client::connect(p.edge());
    // Only requests with the header.
    assert_eq!(c.get("/chaos").status, 200);
    c.send(b"GET /chaos HTTP/1.1\r\nHost: a\r\nx-chaos: 1\r\n\r\n");
    let r = c.response(false);
    assert_eq!(
        (r.status, r.header("ringmesh-error")),
        (503, Some("fault-abort"))
    );
    assert_eq!(c.get("/chaos").status, 200, "the connection goes on");
    // A gRPC call gets its gRPC status.
    let mut h2 = H2Client::connect(p.edge());
    let req = http::Request::post("http://a.test/chaos/Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-chaos", "1")
        .body(())
        .unwrap();
    let r = h2.request(req, b"\0\0\0\0\0", None).expect("h2");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    // Half of them, about.
    let aborted = (0..400).filter(|_| c.get("/half").status == 500).count();
    assert!((120..=280).contains(&aborted), "{aborted} of 400 at 50%");
    // A delay, then the request goes through.
    let t = std::time::Instant::now();
    assert_eq!(c.get("/slow").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let m = p.admin("/metrics").text();
    let count = |route: &str, kind: &str| {
        metric_value(
            &m,
            &format!(
                "ringmesh_faults_total{{listener=\"edge\",route=\"{route}\",kind=\"{kind}\"}}"
            ),
        )
    };
    assert_eq!(count("chaos", "abort"), Some(2.0), "{m}");
    assert_eq!(count("half", "abort"), Some(aborted as f64));
    assert_eq!(count("slow", "delay"), Some(1.0));
    assert_eq!(
        up.requests().iter().filter(|r| r.path == "/half").count(),
        400 - aborted
    );
}

#[test]
fn routes_match_query_parameters_header_patterns_and_path_patterns() {
    let up = Upstream::http(|r| Resp::new(200, "up").header("x-path", &r.path));
    let cfg = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - {{ name: beta, match: {{ path_prefix: /, query: {{ beta: {{ exact: \"1\" }} }} }}, direct_response: {{ status: 200, body: beta }} }}
      - {{ name: debug, match: {{ path_prefix: /, query: {{ debug: {{ present: true }} }} }}, direct_response: {{ status: 200, body: debug }} }}
      - {{ name: ids, match: {{ path_prefix: /, query: {{ id: {{ regex: \"[0-9]{{3}}\" }} }} }}, direct_response: {{ status: 200, body: ids }} }}
      - {{ name: mobile, match: {{ path_prefix: /, headers: {{ user-agent: {{ regex: \".*(Android|iPhone).*\" }} }} }}, direct_response: {{ status: 200, body: mobile }} }}
      - {{ name: anon, match: {{ path_prefix: /private/, headers: {{ authorization: {{ absent: true }} }} }}, direct_response: {{ status: 401, body: anon }} }}
      - {{ name: users, match: {{ path_regex: \"/users/[0-9]+\", method: GET }}, direct_response: {{ status: 200, body: users }} }}
      - {{ name: rest, match: {{ path_prefix: / }}, cluster: up }}
clusters:
  - {{ name: up, endpoints: [ {{ addr: {} }} ] }}
",
        up.addr
    );
    let p = TestProxy::start(&cfg, 1);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("/a?beta=1", &[], "beta"),
        ("/a?beta=2", &[], "up"),
        ("/a?x=1&debug", &[], "debug"),
        ("/a?id=123", &[], "ids"),
        ("/a?id=1234", &[], "up"),
        ("/a", &[("user-agent", "Mozilla (iPhone; x)")], "mobile"),
        ("/a", &[("user-agent", "curl")], "up"),
        ("/private/x", &[], "anon"),
        ("/private/x", &[("authorization", "Bearer t")], "up"),
        ("/users/42", &[], "users"),
        ("/users/42/x", &[], "up"),
    ];
    let mut h1 = Client::connect(p.edge());
    let mut h2 = H2Client::connect(p.edge());
    for (path, fields, want) in cases {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n");
        for (n, v) in *fields {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        h1.send(raw.as_bytes());
        assert_eq!(
            h1.response(false).text(),
            *want,
            "HTTP/1.1 {path} {fields:?}"
        );
        let mut req = http::Request::get(format!("http://a.test{path}"));
        for (n, v) in *fields {
            req = req.header(*n, *v);
        }
        let r = h2.request(req.body(()).unwrap(), b"", None).expect("h2");
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            *want,
            "HTTP/2 {path} {fields:?}"
        );
    }
    // Conditions that cannot be right are refused, naming the field.
    let bad = cfg.replace("\"/users/[0-9]+\"", "\"/users/(\"");
    let errs = ringmesh_control::config::Config::parse(&bad).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("routes[5].match.path_regex")),
        "{errs:?}"
    );
    let bad = cfg.replace("{ present: true }", "{ present: true, regex: x }");
    let errs = ringmesh_control::config::Config::parse(&bad).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("routes[1].match.query.debug")),
        "{errs:?}"
    );
}
