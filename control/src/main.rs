//! The `ringmesh` binary (its commands are listed in README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ringmesh_control::config::Config;
use ringmesh_control::config::decode::parse_duration;
use ringmesh_control::mesh::agent::ControlSource;
use ringmesh_control::mesh::client::Trust;
use ringmesh_control::mesh::etcd::Cluster;
use ringmesh_control::mesh::{ApiTls, ControlOptions, ControlPlane, MeshSource, StoreOptions};
use ringmesh_control::{ConfigSource, Proxy, ProxyOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

const USAGE: &str = "\
ringmesh: service-mesh proxy

USAGE:
    ringmesh                              run the proxy on the embedded default config
    ringmesh proxy --config FILE          run the proxy from a YAML file (reloaded on change and SIGHUP)
    ringmesh proxy --control https://HOST:PORT[,...] --node NAME
                   (--control-ca FILE | --control-ca-sha256 HEX)
                   [--cache FILE] [--token-file FILE] [--identity-dir DIR]
                                          run the proxy fed by a control plane, whose
                                          certificate must chain to the CA in FILE, or to the CA
                                          whose key has that SHA-256 (pinned); the token (or
                                          $RINGMESH_TOKEN) gets the node its first certificate,
                                          then it renews with it; --identity-dir keeps that
                                          identity across restarts (default: memory only);
                                          --cache keeps the last snapshot, to start without the
                                          control plane
    ringmesh control --config MESH.yaml [--bind ADDR] [--state FILE]
                     [--tls-cert FILE --tls-key FILE]
                     [--etcd URL[,URL...] [--etcd-prefix PREFIX]
                      [--etcd-ca FILE [--etcd-cert FILE --etcd-key FILE]]]
                                          run the control plane, its API over TLS (its
                                          certificate from the mesh CA, or FILE); with --etcd,
                                          replicas share their state in etcd (the file seeds an
                                          empty store); https:// URLs need --etcd-ca, and a
                                          client certificate where etcd asks for one
    ringmesh check FILE                   validate a config; print every error
    ringmesh ctl [--server HOST:PORT] [--token-file FILE] [--ca FILE | --ca-sha256 HEX]
                 [--output text|json] status|check|clusters|endpoints C|split NODE ROUTE C=W..
                                          the operator's client of the control plane
                                          (`ringmesh ctl --help`; docs/control.md)
    ringmesh init --proxy-uid UID [--outbound-port 15001] [--inbound-port P]
                  [--skip-inbound-ports P,..] [--skip-outbound-ports P,..]
                  [--skip-outbound-cidrs CIDR,..] [--accelerate [--cgroup DIR]]
                  [--dry-run] [--remove]
                                          in a workload's network namespace, as root: redirect
                                          its TCP to the sidecar (nftables table `ringmesh`);
                                          the proxy's user is left alone; --accelerate also
                                          attaches the kernel shortcut (eBPF) to the workload's
                                          cgroup v2 (default: init's own); --dry-run prints
                                          the rules, --remove deletes them (docs/sidecar.md)

OPTIONS:
    --workers N            worker threads (default: one per core)
    --admin ADDR           admin API address (default: the config's, 127.0.0.1:9901)
    --log-format text|json log format (default: text)
    --log-level LEVEL      error, warn, info, debug or trace (default: info)
    --drain-timeout DUR    on SIGTERM/SIGINT, time to let requests finish (default: 10s)
    --insecure-plaintext   control API in cleartext (both on `control` and on `proxy`, with
                           http:// URLs): tokens and snapshots unprotected; loopback only
    -h, --help             this help
    -V, --version          the version
";

#[derive(Debug, Default)]
struct Args {
    command: Option<String>,
    config: Option<PathBuf>,
    control: Option<String>,
    node: Option<String>,
    bind: Option<String>,
    file: Option<PathBuf>,
    cache: Option<PathBuf>,
    token_file: Option<PathBuf>,
    identity_dir: Option<PathBuf>,
    control_ca: Option<PathBuf>,
    control_ca_sha256: Option<String>,
    insecure_plaintext: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    state: Option<PathBuf>,
    etcd: Option<String>,
    etcd_prefix: Option<String>,
    etcd_ca: Option<String>,
    etcd_cert: Option<String>,
    etcd_key: Option<String>,
    workers: Option<usize>,
    admin: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    drain_timeout: Option<Duration>,
}

fn parse_args() -> anyhow::Result<Args> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            Short('V') | Long("version") => {
                println!("ringmesh {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Long("config") => a.config = Some(p.value()?.into()),
            Long("control") => a.control = Some(p.value()?.string()?),
            Long("node") => a.node = Some(p.value()?.string()?),
            Long("bind") => a.bind = Some(p.value()?.string()?),
            Long("cache") => a.cache = Some(p.value()?.into()),
            Long("token-file") => a.token_file = Some(p.value()?.into()),
            Long("identity-dir") => a.identity_dir = Some(p.value()?.into()),
            Long("control-ca") => a.control_ca = Some(p.value()?.into()),
            Long("control-ca-sha256") => a.control_ca_sha256 = Some(p.value()?.string()?),
            Long("insecure-plaintext") => a.insecure_plaintext = true,
            Long("tls-cert") => a.tls_cert = Some(p.value()?.into()),
            Long("tls-key") => a.tls_key = Some(p.value()?.into()),
            Long("state") => a.state = Some(p.value()?.into()),
            Long("etcd") => a.etcd = Some(p.value()?.string()?),
            Long("etcd-prefix") => a.etcd_prefix = Some(p.value()?.string()?),
            Long("etcd-ca") => a.etcd_ca = Some(p.value()?.string()?),
            Long("etcd-cert") => a.etcd_cert = Some(p.value()?.string()?),
            Long("etcd-key") => a.etcd_key = Some(p.value()?.string()?),
            Long("workers") => {
                let n: usize = p.value()?.parse()?;
                if n == 0 {
                    bail!("--workers must be at least 1");
                }
                a.workers = Some(n);
            }
            Long("admin") => a.admin = Some(p.value()?.string()?),
            Long("log-format") => a.log_format = Some(p.value()?.string()?),
            Long("log-level") => a.log_level = Some(p.value()?.string()?),
            Long("drain-timeout") => {
                let v = p.value()?.string()?;
                a.drain_timeout = Some(parse_duration(&v).with_context(|| {
                    format!("--drain-timeout: `{v}` is not a duration such as 10s")
                })?);
            }
            Value(v) if a.command.is_none() => a.command = Some(v.string()?),
            Value(v) if a.command.as_deref() == Some("check") && a.file.is_none() => {
                a.file = Some(v.into())
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(a)
}

fn init_logging(format: Option<&str>, level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let level: LevelFilter = match level.unwrap_or("info") {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        "off" => LevelFilter::OFF,
        other => bail!("--log-level: `{other}` is not one of error, warn, info, debug, trace, off"),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(|| LogOut);
    match format.unwrap_or("text") {
        "text" => builder.with_ansi(false).init(),
        "json" => builder.json().init(),
        other => bail!("--log-format: `{other}` is not text or json"),
    }
    Ok(())
}

/// Standard error for the log, where a failed write loses the line and nothing else: a log
/// reader that went away (a collector restarting, `| head`) must not take the proxy with it
/// (tracing-subscriber reports a write error with `eprintln!`, which panics on a closed pipe).
struct LogOut;

impl std::io::Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn check(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(file) = file else {
        bail!("usage: ringmesh check FILE")
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    match Config::parse(&text) {
        Ok(_) => {
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                println!("{}: {e}", file.display());
            }
            println!("{}: {} error(s)", file.display(), errors.len());
            Ok(ExitCode::from(1))
        }
    }
}

fn proxy(a: Args) -> anyhow::Result<ExitCode> {
    let source = match (a.config, a.control, a.node) {
        (Some(_), Some(_), _) => bail!("--config and --control: choose one"),
        (_, Some(urls), Some(node)) => {
            let trust = match (&a.control_ca, &a.control_ca_sha256) {
                (Some(_), Some(_)) => bail!("--control-ca and --control-ca-sha256: choose one"),
                (Some(f), None) => Some(Trust::ca_file(f).map_err(|e| anyhow::anyhow!(e))?),
                (None, Some(h)) => Some(Trust::pin(h).map_err(|e| anyhow::anyhow!(e))?),
                (None, None) => None,
            };
            let mut s = ControlSource::parse(&urls, &node, a.cache, trust, a.insecure_plaintext)
                .map_err(|e| anyhow::anyhow!(e))?;
            if a.insecure_plaintext {
                tracing::warn!(
                    "--insecure-plaintext: the control plane is reached in cleartext; snapshots are unauthenticated"
                );
            }
            s.token = match &a.token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("--token-file: cannot read {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => std::env::var("RINGMESH_TOKEN").ok(),
            };
            s.identity_dir = a.identity_dir;
            ConfigSource::Control(s)
        }
        (_, Some(_), None) => bail!("--control needs --node NAME"),
        (_, None, Some(_)) => bail!("--node needs --control URL"),
        (Some(path), None, None) => ConfigSource::File(path),
        (None, None, None) => ConfigSource::Embedded,
    };
    let admin =
        match &a.admin {
            Some(s) => Some(s.parse().with_context(|| {
                format!("--admin: `{s}` is not an address such as 127.0.0.1:9901")
            })?),
            None => None,
        };
    let opts = ProxyOptions {
        source,
        workers: a.workers,
        admin,
        drain_timeout: a.drain_timeout.unwrap_or(Duration::from_secs(10)),
        ..ProxyOptions::default()
    };
    match ringmesh_core::sys::raise_fd_limit() {
        Ok(n) if n < 4096 => tracing::warn!(
            limit = n,
            "low open-file limit: each proxied connection uses two"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1])?;
    let proxy = match Proxy::start(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringmesh: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let remote = proxy.remote();
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: reloading");
                remote.reload();
            }
            SIGUSR1 => {
                // After log rotation: every worker reopens its access log files at its next
                // flush (within one sweeper tick).
                tracing::info!("SIGUSR1: reopening access logs");
                ringmesh_core::access_log::reopen_all();
            }
            _ => {
                tracing::info!("draining");
                let finished = proxy.drain();
                tracing::info!(finished, "stopped");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A key prefix ending in `/`.
fn store_prefix(p: &str) -> anyhow::Result<String> {
    if p.is_empty() || p.len() > 200 || p.contains(char::is_whitespace) {
        bail!("--etcd-prefix: `{p}` is not a key prefix such as /ringmesh/");
    }
    Ok(if p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    })
}

fn control(a: Args) -> anyhow::Result<ExitCode> {
    let Some(config) = a.config else {
        bail!("usage: ringmesh control --config MESH.yaml")
    };
    let bind =
        match &a.bind {
            Some(s) => Some(s.parse().with_context(|| {
                format!("--bind: `{s}` is not an address such as 127.0.0.1:9900")
            })?),
            None => None,
        };
    let cert_key = match (&a.etcd_cert, &a.etcd_key) {
        (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
        (None, None) => None,
        _ => bail!("--etcd-cert and --etcd-key go together"),
    };
    let store = match &a.etcd {
        Some(urls) => Some(StoreOptions {
            etcd: Cluster::parse(urls, a.etcd_ca.as_deref(), cert_key)
                .map_err(|e| anyhow::anyhow!("--etcd: {e}"))?,
            prefix: store_prefix(a.etcd_prefix.as_deref().unwrap_or("/ringmesh/"))?,
        }),
        None if a.etcd_prefix.is_some() || a.etcd_ca.is_some() || cert_key.is_some() => {
            bail!("--etcd-prefix, --etcd-ca, --etcd-cert and --etcd-key need --etcd")
        }
        None => None,
    };
    let tls = match (a.insecure_plaintext, a.tls_cert, a.tls_key) {
        (true, None, None) => ApiTls::Plaintext,
        (true, _, _) => bail!("--insecure-plaintext and --tls-cert/--tls-key: choose one"),
        (false, Some(cert), Some(key)) => ApiTls::Files { cert, key },
        (false, None, None) => ApiTls::Mesh,
        (false, _, _) => bail!("--tls-cert and --tls-key go together"),
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let plane = match ControlPlane::start(ControlOptions {
        source: MeshSource::File(config.clone()),
        bind,
        state_file: a.state,
        store,
        tls,
    }) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", config.display());
            }
            return Ok(ExitCode::from(1));
        }
    };
    tracing::info!(api = %plane.addr(), "control plane ready");
    if signals.forever().next().is_some() {
        tracing::info!("stopping");
        plane.stop();
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // `ctl` has flags of its own too, and sets up nothing of the proxy's.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return ringmesh_control::ctl::command(std::env::args_os().skip(2));
    }
    // `init` has flags of its own and runs before anything else is set up.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return match ringmesh_control::init::command(std::env::args_os().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh init: {e}");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringmesh: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(args.log_format.as_deref(), args.log_level.as_deref()) {
        eprintln!("ringmesh: {e}");
        return ExitCode::from(2);
    }
    let result = match args.command.as_deref() {
        None | Some("proxy") => proxy(args),
        Some("check") => check(args.file),
        Some("control") => control(args),
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringmesh: {e:#}");
            ExitCode::from(2)
        }
    }
}
