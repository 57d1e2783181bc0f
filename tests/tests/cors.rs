//! CORS as a real browser sees it: a page in headless Chromium on one origin calls the proxy
//! on another with `fetch`. From an allowed origin a simple call and a preflighted one
//! succeed (and the page reads an exposed field); from a disallowed origin the browser blocks
//! both, and the preflighted call never reaches the upstream. The fields themselves are checked
//! with curl: the proxy answers preflights, removes the upstream's own CORS fields, and says
//! `Vary: Origin`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ringmesh_tests::*;

/// A page whose script calls `api` twice and writes what it got into `<pre id="out">`.
fn page(api: String) -> Upstream {
    Upstream::http(move |_| {
        let html = format!(
            r#"<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{api}");
    out.simple = [r.status, await r.text(), r.headers.get("x-total")];
  }} catch (e) {{ out.simple = "blocked"; }}
  try {{
    const r = await fetch("{api}", {{ method: "PUT", headers: {{ "x-token": "t" }}, body: "x" }});
    out.preflighted = [r.status, await r.text()];
  }} catch (e) {{ out.preflighted = "blocked"; }}
  document.getElementById("out").textContent = JSON.stringify(out);
}})();
</script></body></html>"#
        );
        Resp::new(200, html).header("content-type", "text/html")
    })
}

/// What the page wrote, after Chromium ran it.
fn run_page(chromium: &PathBuf, url: &str, profile: &str) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("ringmesh-cors-{profile}-{}", std::process::id()));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg("--dump-dom")
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium");
    let _ = std::fs::remove_dir_all(&dir);
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"out\">").expect("the page") + "<pre id=\"out\">".len();
    let text = &dom[start..start + dom[start..].find("</pre>").unwrap()];
    serde_json::from_str(&text.replace("&quot;", "\"")).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn config(api: SocketAddr, allowed: &str) -> String {
    format!(
        "admin: 127.0.0.1:0
listeners:
  - name: edge
    bind: 127.0.0.1:0
    routes:
      - name: api
        match: {{ path_prefix: /api/ }}
        cluster: api
        cors:
          allow_origins: [ \"{allowed}\", \"https://*.example.com\" ]
          allow_methods: [ GET, PUT ]
          allow_headers: [ x-token ]
          expose_headers: [ x-total ]
          max_age: 10m
clusters:
  - {{ name: api, endpoints: [ {{ addr: {api} }} ] }}
"
    )
}

#[test]
fn a_page_on_an_allowed_origin_may_call_and_one_on_another_may_not() {
    let Some(chromium) = tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    let api = Upstream::http(|_| {
        Resp::new(200, "api")
            .header("x-total", "5")
            .header("access-control-allow-origin", "*")
    });
    // The pages' servers first: their origins go in the config.
    let (good_page, bad_page);
    let proxy_addr = free_port();
    let api_url = format!("http://{proxy_addr}/api/items");
    good_page = page(api_url.clone());
    bad_page = page(api_url);
    let good_origin = format!("http://{}", good_page.addr);
    let cfg = config(api.addr, &good_origin).replacen(
        "bind: 127.0.0.1:0",
        &format!("bind: {proxy_addr}"),
        1,
    );
    let _p = TestProxy::start(&cfg, 1);

    let good = run_page(&chromium, &format!("http://{}/", good_page.addr), "good");
    assert_eq!(
        good["simple"],
        serde_json::json!([200, "api", "5"]),
        "{good}"
    );
    assert_eq!(
        good["preflighted"],
        serde_json::json!([200, "api"]),
        "{good}"
    );
    let seen = api.requests();
    assert!(
        seen.iter().any(|r| r.method == "PUT"),
        "the preflighted call went through"
    );
    assert!(
        seen.iter().all(|r| r.method != "OPTIONS"),
        "the proxy answered the preflight"
    );

    let before = api.requests().len();
    let bad = run_page(&chromium, &format!("http://{}/", bad_page.addr), "bad");
    assert_eq!(bad["simple"], "blocked", "{bad}");
    assert_eq!(bad["preflighted"], "blocked", "{bad}");
    assert!(
        api.requests()[before..].iter().all(|r| r.method != "PUT"),
        "a refused preflight sends nothing upstream"
    );
}

fn curl(args: &[&str], url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

fn has_cors_field(head: &str) -> bool {
    head.lines().any(|l| l.starts_with("access-control-"))
}

#[test]
fn preflights_are_answered_and_answers_carry_the_policys_fields_only() {
    if tool(&["curl"]).is_none() {
        return;
    }
    let api = Upstream::http(|_| {
        Resp::new(200, "api")
            .header("x-total", "5")
            .header("access-control-allow-origin", "*")
    });
    let p = TestProxy::start(&config(api.addr, "https://app.example"), 1);
    let url = format!("http://{}/api/x", p.edge());
    let pre = |origin: &str, method: &str| {
        curl(
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("origin: {origin}"),
                "-H",
                &format!("access-control-request-method: {method}"),
                "-H",
                "access-control-request-headers: x-token",
            ],
            &url,
        )
    };
    let ok = pre("https://app.example", "PUT");
    assert!(ok.starts_with("http/1.1 204"), "{ok}");
    for f in [
        "access-control-allow-origin: https://app.example",
        "access-control-allow-methods: get, put",
        "access-control-allow-headers: x-token",
        "access-control-max-age: 600",
        "vary: origin, access-control-request-method, access-control-request-headers",
    ] {
        assert!(ok.contains(f), "{f} in {ok}");
    }
    let sub = pre("https://a.b.example.com", "PUT");
    assert!(
        sub.contains("access-control-allow-origin: https://a.b.example.com"),
        "{sub}"
    );
    for refused in [
        pre("https://evil.example", "PUT"),
        pre("https://app.example", "DELETE"),
    ] {
        assert!(refused.starts_with("http/1.1 204"), "{refused}");
        assert!(!has_cors_field(&refused), "no CORS field: {refused}");
    }
    assert_eq!(api.requests().len(), 0, "preflights stay at the proxy");
    // An OPTIONS without an origin is no preflight: it goes upstream.
    let plain = curl(
        &["-X", "OPTIONS", "-H", "access-control-request-method: PUT"],
        &url,
    );
    assert!(plain.starts_with("http/1.1 200"), "{plain}");
    assert_eq!(api.requests().len(), 1);
    let before = api.requests().len();
    // Actual requests: the policy's fields for an allowed origin; none (not even the
    // upstream's `*`) for another; `Vary: Origin` on both.
    let allowed = curl(&["-H", "origin: https://app.example"], &url);
    assert_eq!(api.requests().len(), before + 1);
    assert!(
        allowed.contains("access-control-allow-origin: https://app.example"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-expose-headers: x-total"),
        "{allowed}"
    );
    assert!(
        !allowed.contains("access-control-allow-origin: *"),
        "{allowed}"
    );
    assert!(allowed.contains("vary: origin"), "{allowed}");
    let other = curl(&["-H", "origin: https://evil.example"], &url);
    assert!(!has_cors_field(&other), "{other}");
    assert!(other.contains("vary: origin"), "{other}");
    // HTTP/2 the same.
    let h2 = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            "origin: https://app.example",
        ],
        &url,
    );
    assert!(
        h2.contains("access-control-allow-origin: https://app.example"),
        "{h2}"
    );
}

#[test]
fn credentials_with_any_origin_are_refused() {
    let cfg = config("127.0.0.1:9".parse().unwrap(), "*").replace(
        "max_age: 10m",
        "max_age: 10m\n          allow_credentials: true",
    );
    let errs = ringmesh_control::config::Config::parse(&cfg).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("routes[0].cors.allow_credentials")),
        "{errs:?}"
    );
    // A pattern of a whole top-level domain is refused too.
    let cfg = config("127.0.0.1:9".parse().unwrap(), "https://*.com");
    let errs = ringmesh_control::config::Config::parse(&cfg).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("routes[0].cors.allow_origins[0]")),
        "{errs:?}"
    );
}
