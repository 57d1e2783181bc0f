//! `ringmesh ctl`: the operator's client of the control plane, as `kubectl`, `linkerd` and
//! `istioctl` are: `status`, `check`, `clusters`, `endpoints CLUSTER`, `tap NODE` and `split`.
//!
//! It talks to the control API with the operator's credentials, the same way a proxy's agent
//! does (mesh/client.rs): over TLS verified by a CA file or a pinned CA key, with an admin
//! bearer token. Each setting is a flag or an environment variable, flags first:
//! `--server` / `RINGMESH_SERVER`, `--token-file` / `RINGMESH_TOKEN_FILE` (or the token itself
//! in `RINGMESH_TOKEN`), `--ca` / `RINGMESH_CA`, `--ca-sha256` / `RINGMESH_CA_SHA256`.
//! Output is aligned text for people, or JSON (`--output json`) for scripts; colour only on a
//! terminal. A command exits 1 when what it reports is wrong (a node out of sync, a failed
//! check), 2 when it could not ask.

mod api;
mod check;
mod clusters;
mod output;
mod split;
mod status;
mod tap;

use std::ffi::OsString;
use std::process::ExitCode;

pub use api::Api;
pub use output::Format;

/// `ringmesh ctl ARGS` (after `ctl`).
pub fn command(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringmesh ctl: {e}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "\
ringmesh ctl [--server HOST:PORT] [--token-file FILE] [--ca FILE | --ca-sha256 HEX]
             [--output text|json] COMMAND

  status                       every node: version served and applied, in sync or why not,
                               last contact, certificate expiry (exit 1 if one is wrong)
                               [--stale-after 2m] [--cert-warn 1h]
  check                        preflight: reachable, credentials, CA validity, every node
                               in sync and recent, clock skew (exit 1 if a check fails)
                               [--max-age 5m] [--max-skew 5s] [--ca-warn 168h]
  clusters                     every cluster: requests/s, success rate, p50 and p99 over the
                               last 30 s as the proxies report them; endpoints by source
  endpoints CLUSTER            one cluster's endpoints: address, source, zone, weight,
                               health and ejection as the proxies see them, expiry
  tap NODE                     the live requests of one proxy, through the control plane
                               [--listener L] [--route R] [--cluster C] [--n 100]
                               [--pickup-timeout 10s]
  split NODE ROUTE CLUSTER=WEIGHT... [--expect-version V]
                               set a route's weighted split, against the version read (or
                               V): a change since is refused and nothing is changed

Settings: flags, else RINGMESH_SERVER, RINGMESH_TOKEN_FILE (or RINGMESH_TOKEN),
RINGMESH_CA, RINGMESH_CA_SHA256.
";

/// Whether the command's report is all good; `Err`: it could not run.
fn run(args: impl IntoIterator<Item = OsString>) -> Result<bool, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut settings = api::Settings::from_env();
    let mut format = Format::Text;
    let mut words: Vec<String> = Vec::new();
    let mut options: Vec<(String, String)> = Vec::new();
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => {
                print!("{USAGE}");
                return Ok(true);
            }
            Long(flag) => {
                let flag = flag.to_string();
                let value = p
                    .value()
                    .map_err(err)?
                    .into_string()
                    .map_err(|_| format!("--{flag}: not UTF-8"))?;
                match flag.as_str() {
                    "server" => settings.server = Some(value),
                    "token-file" => settings.token_file = Some(value.into()),
                    "ca" => settings.ca = Some(value.into()),
                    "ca-sha256" => settings.ca_sha256 = Some(value),
                    "output" | "o" => format = Format::parse(&value)?,
                    _ => options.push((flag, value)),
                }
            }
            Short('o') => {
                let value = p.value().map_err(err)?.string().map_err(err)?;
                format = Format::parse(&value)?;
            }
            Value(v) => words.push(v.string().map_err(err)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let Some((command, rest)) = words.split_first() else {
        return Err(format!("no command\n\n{USAGE}"));
    };
    let option = |name: &str, default: &str| -> Result<std::time::Duration, String> {
        let v = options
            .iter()
            .find(|(f, _)| f == name)
            .map_or(default, |(_, v)| v.as_str());
        crate::config::decode::parse_duration(v)
            .ok_or_else(|| format!("--{name}: `{v}` is not a duration such as 30s"))
    };
    let known: &[&str] = match command.as_str() {
        "status" => &["stale-after", "cert-warn"],
        "check" => &["max-age", "max-skew", "ca-warn"],
        "split" => &["expect-version"],
        "tap" => &["listener", "route", "cluster", "n", "pickup-timeout"],
        _ => &[],
    };
    if let Some((f, _)) = options.iter().find(|(f, _)| !known.contains(&f.as_str())) {
        return Err(format!("{command}: unknown option --{f}"));
    }
    let api = Api::new(&settings)?;
    let out = output::Out::new(format);
    match (command.as_str(), rest) {
        ("status", []) => status::run(
            &api,
            &out,
            option("stale-after", "2m")?,
            option("cert-warn", "1h")?,
        ),
        ("check", []) => check::run(
            &api,
            &out,
            check::Limits {
                max_age: option("max-age", "5m")?,
                max_skew: option("max-skew", "5s")?,
                ca_warn: option("ca-warn", "168h")?,
            },
        ),
        ("clusters", []) => clusters::list(&api, &out),
        ("endpoints", [cluster]) => clusters::endpoints(&api, &out, cluster),
        ("tap", [node]) => {
            let mut filter = serde_json::Map::new();
            for k in ["listener", "route", "cluster"] {
                if let Some((_, v)) = options.iter().find(|(f, _)| f == k) {
                    filter.insert(k.into(), v.clone().into());
                }
            }
            let n = match options.iter().find(|(f, _)| f == "n") {
                Some((_, v)) => Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--n: `{v}` is not a count"))?,
                ),
                None => None,
            };
            let pickup = option("pickup-timeout", "10s")?;
            tap::run(&api, &out, node, tap::Ask { filter, n, pickup })
        }
        ("split", [node, route, weights @ ..]) if !weights.is_empty() => {
            let expect = match options.iter().find(|(f, _)| f == "expect-version") {
                Some((_, v)) => Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--expect-version: `{v}` is not a version"))?,
                ),
                None => None,
            };
            split::run(&api, &out, node, route, weights, expect)
        }
        _ => Err(format!(
            "`{}`: not a command as written\n\n{USAGE}",
            words.join(" ")
        )),
    }
}
