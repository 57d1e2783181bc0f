//! `ringmesh ctl tap NODE`: the live tap of one proxy, through the control plane. The proxy
//! picks the request up on its own connection to the control plane and posts its events
//! there, so its admin port need not be reachable from where the operator is.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::Api;
use super::api::refusal;
use super::output::{Format, Out};
use crate::http::percent_encode;

/// What `tap` asks for: the proxy's `/tap` filters and count.
pub(super) struct Ask {
    pub filter: Map<String, Value>,
    pub n: Option<u64>,
    /// How long the node has to pick the tap up.
    pub pickup: Duration,
}

pub(super) fn run(api: &Api, out: &Out, node: &str, ask: Ask) -> Result<bool, String> {
    let mut body = ask.filter;
    if let Some(n) = ask.n {
        body.insert("n".into(), n.into());
    }
    let path = format!("/v1/nodes/{}/taps", percent_encode(node));
    let a = api.call("POST", &path, Some(&Value::Object(body)), None)?;
    if a.status != 201 {
        return Err(refusal(&path, &a));
    }
    let Some(id) = a.body["id"].as_str().map(str::to_string) else {
        return Err(format!("{path}: the answer has no tap id"));
    };
    let read = format!("/v1/taps/{id}?wait=5s");
    let asked = Instant::now();
    let mut stdout = std::io::stdout().lock();
    loop {
        let v = api.get(&read)?;
        for e in v["events"].as_array().into_iter().flatten() {
            let line = match out.format {
                Format::Json => e.to_string(),
                Format::Text => text_line(e),
            };
            // A reader that went away (a closed pipe) ends the tap.
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                let _ = api.call("DELETE", &format!("/v1/taps/{id}"), None, None);
                return Ok(true);
            }
        }
        let dropped = v["dropped"].as_u64().unwrap_or(0);
        if v["done"] == true {
            if dropped > 0 {
                eprintln!("ringmesh ctl: {dropped} events were dropped (the reader fell behind)");
            }
            return Ok(true);
        }
        if v["picked_up"] != true && asked.elapsed() > ask.pickup {
            let _ = api.call("DELETE", &format!("/v1/taps/{id}"), None, None);
            return Err(format!(
                "node `{node}` did not pick the tap up within {}s: is its proxy running and connected to this control plane ({})?",
                ask.pickup.as_secs(),
                api.addr()
            ));
        }
    }
}

/// One event as a line for people: when, status, method, authority and path, duration, where
/// it went. Control characters a client put in its path (or a node in anything) are shown as
/// `?`: they must not drive the operator's terminal.
fn text_line(e: &Value) -> String {
    let s = |k: &str| -> String {
        e[k].as_str()
            .unwrap_or("-")
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let ms = e["duration_ms"]
        .as_f64()
        .map_or("-".into(), |d| format!("{d:.1}ms"));
    format!(
        "{} {} {} {}{} {} {}/{} -> {} {}",
        s("time"),
        e["status"],
        s("method"),
        s("authority"),
        s("path"),
        ms,
        s("listener"),
        s("route"),
        s("cluster"),
        s("endpoint"),
    )
}
