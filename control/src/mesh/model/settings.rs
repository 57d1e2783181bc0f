//! The mesh file's `ca` and `api` sections: the certificate authority's settings, and who may
//! call the control API with which credential.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::*;

/// `ca: { cert_ttl, rotation_grace }`.
pub(super) fn check_ca(root: &Map<String, Value>, errors: &mut Vec<ConfigError>) -> CaSpec {
    let mut ca = CaSpec {
        cert_ttl: Duration::from_secs(24 * 3600),
        rotation_grace: Duration::from_secs(300),
        operator: None,
    };
    let Some(v) = root.get("ca").filter(|v| !v.is_null()) else {
        return ca;
    };
    let Some(m) = v.as_object() else {
        errors.push(error("ca", "expected a mapping"));
        return ca;
    };
    let mut files = (None, None);
    for (k, v) in m {
        let d = v.as_str().and_then(parse_duration);
        match (k.as_str(), d) {
            ("cert", _) => files.0 = Some(v),
            ("key", _) => files.1 = Some(v),
            ("cert_ttl", Some(d))
                if d >= Duration::from_secs(2) && d <= Duration::from_secs(366 * 86400) =>
            {
                ca.cert_ttl = d;
            }
            ("cert_ttl", _) => errors.push(error(
                "ca.cert_ttl",
                "expected a duration from 2s to 366 days, such as 24h",
            )),
            ("rotation_grace", Some(d)) if !d.is_zero() => ca.rotation_grace = d,
            ("rotation_grace", _) => {
                errors.push(error("ca.rotation_grace", "expected a duration such as 5m"))
            }
            _ => errors.push(error(
                format!("ca.{k}"),
                format!(
                    "unknown field `{k}`; expected one of: cert_ttl, rotation_grace, cert, key"
                ),
            )),
        }
    }
    match files {
        (None, None) => {}
        (Some(cert), Some(key)) => ca.operator = operator_ca(cert, key, errors),
        (Some(_), None) => errors.push(error("ca.key", "required with ca.cert")),
        (None, Some(_)) => errors.push(error("ca.cert", "required with ca.key")),
    }
    ca
}

/// `ca: { cert: FILE, key: FILE }`: the operator's CA, read and checked now (an API change
/// that names unusable files is refused like any other invalid change).
pub(super) fn operator_ca(
    cert: &Value,
    key: &Value,
    errors: &mut Vec<ConfigError>,
) -> Option<OperatorCa> {
    // A regular file, and a small one: not a device, a FIFO, or a file that never ends.
    let read = |v: &Value, field: &str, errors: &mut Vec<ConfigError>| match v.as_str() {
        Some(p) if !p.is_empty() => match std::fs::metadata(p) {
            Ok(m) if !m.is_file() || m.len() > 1 << 20 => {
                errors.push(error(
                    field,
                    format!("`{p}` is not a PEM file (a regular file up to 1 MiB)"),
                ));
                None
            }
            Ok(_) => match std::fs::read_to_string(p) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(error(field, format!("cannot read `{p}`: {e}")));
                    None
                }
            },
            Err(e) => {
                errors.push(error(field, format!("cannot read `{p}`: {e}")));
                None
            }
        },
        _ => {
            errors.push(error(field, "expected a file path"));
            None
        }
    };
    let (cert, key) = (read(cert, "ca.cert", errors)?, read(key, "ca.key", errors)?);
    match Authority::from_operator(&cert, &key) {
        Ok(a) => Some(OperatorCa {
            fingerprint: a.fingerprint,
            cert,
            key,
        }),
        Err(CaError::Operator { field, why }) => {
            errors.push(error(field, why));
            None
        }
        Err(e) => {
            errors.push(error("ca.cert", e.to_string()));
            None
        }
    }
}

/// The fields that name files on the control plane's host (`ca.cert`, `ca.key`): they come from
/// the mesh file only. A change through the API that sets or alters one is refused, so that
/// an API credential never makes the control plane read a file of its choosing.
pub fn api_may_not_name_files(old: &Value, new: &Value) -> Vec<ConfigError> {
    ["cert", "key"]
        .iter()
        .filter(|k| old.pointer(&format!("/ca/{k}")) != new.pointer(&format!("/ca/{k}")))
        .map(|k| {
            error(
                format!("ca.{k}"),
                "comes from the mesh file only: the API does not make the control plane read files",
            )
        })
        .collect()
}

/// `api: { names: [NAME], admins: [{ name, token_sha256 } | { name, identity }] }`.
pub(super) fn check_api(root: &Map<String, Value>, errors: &mut Vec<ConfigError>) -> ApiSpec {
    let mut api = ApiSpec::default();
    let Some(v) = root.get("api").filter(|v| !v.is_null()) else {
        return api;
    };
    let Some(m) = v.as_object() else {
        errors.push(error("api", "expected a mapping"));
        return api;
    };
    for k in m
        .keys()
        .filter(|k| !["names", "admins"].contains(&k.as_str()))
    {
        errors.push(error(
            format!("api.{k}"),
            format!("unknown field `{k}`; expected one of: names, admins"),
        ));
    }
    for (i, n) in m
        .get("names")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match n.as_str() {
            Some(s) if crate::config::valid_dns_name(s) => api.names.push(s.to_ascii_lowercase()),
            _ => errors.push(error(
                format!("api.names[{i}]"),
                "expected a DNS name such as cp.mesh.internal",
            )),
        }
    }
    if m.get("names").is_some_and(|n| !n.is_array()) {
        errors.push(error("api.names", "expected a list of DNS names"));
    }
    let admins = match m.get("admins") {
        None | Some(Value::Null) => return api,
        Some(Value::Array(a)) => a,
        Some(_) => {
            errors.push(error("api.admins", "expected a list"));
            return api;
        }
    };
    let mut names = BTreeSet::new();
    for (i, a) in admins.iter().enumerate() {
        let path = format!("api.admins[{i}]");
        let Some(a) = a.as_object() else {
            errors.push(error(
                path,
                "expected { name, token_sha256 } or { name, identity }",
            ));
            continue;
        };
        for k in a
            .keys()
            .filter(|k| !["name", "token_sha256", "identity"].contains(&k.as_str()))
        {
            errors.push(error(
                format!("{path}.{k}"),
                format!("unknown field `{k}`; expected one of: name, token_sha256, identity"),
            ));
        }
        let name = match a.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n.len() <= 128 && !n.contains(char::is_control) => {
                if !names.insert(n.to_string()) {
                    errors.push(error(
                        format!("{path}.name"),
                        format!("`{n}` is named twice"),
                    ));
                }
                n.to_string()
            }
            _ => {
                errors.push(error(
                    format!("{path}.name"),
                    "required: 1 to 128 characters",
                ));
                String::new()
            }
        };
        let token_sha256 = match a.get("token_sha256") {
            None => None,
            Some(Value::String(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(_) => {
                errors.push(error(
                    format!("{path}.token_sha256"),
                    "expected the SHA-256 of the admin's token, as 64 hex digits",
                ));
                None
            }
        };
        let identity = match a.get("identity") {
            None => None,
            Some(Value::String(id)) if ringmesh_core::tls::valid_spiffe_id(id) => Some(id.clone()),
            Some(_) => {
                errors.push(error(
                    format!("{path}.identity"),
                    "expected a SPIFFE ID such as spiffe://mesh.local/ns/ops/sa/admin",
                ));
                None
            }
        };
        if a.contains_key("token_sha256") == a.contains_key("identity") {
            errors.push(error(path, "give exactly one of token_sha256 and identity"));
            continue;
        }
        api.admins.push(Admin {
            name,
            token_sha256,
            identity,
        });
    }
    api
}
