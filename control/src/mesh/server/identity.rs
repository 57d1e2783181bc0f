//! Certificates for nodes: `POST /v1/nodes/{node}/certificate`, body `{"public_key": HEX}`.
//!
//! A node gets its first certificate with its bootstrap token (`Authorization: Bearer`), once:
//! the token is then spent, and a second use is refused and logged, unless it is the same
//! request again (the same public key: its answer was lost), which is answered again. A token
//! may also expire (`token_expires`). Afterwards the node renews over mTLS with the certificate
//! it holds, for its own node and identity only (the API's `auth` checked that). The proxy
//! makes its key pair itself; only the public key travels.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::super::ca::sha256_hex;
use super::auth::{Caller, Refusal, same_digest};
use super::*;
use crate::http::{Request, Response};

/// What a certificate request comes to.
#[derive(Debug)]
pub(super) enum Decision {
    /// Issue over this public key; with a bootstrap token, record it as spent first.
    Issue {
        public_key: String,
        spend: Option<Spent>,
    },
    Refuse(Response),
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn refuse(status: u16, kind: &'static str, message: impl Into<String>) -> Decision {
    Decision::Refuse(Refusal::new(status, kind, message).response())
}

/// A digest no token has: what a token for a node without one is compared with, so that the
/// answer (and its time) says nothing of which nodes exist.
const NO_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Decides on a certificate request for `node` from `caller` (no state changes). The caller's
/// credential is checked before anything of the request or the node is looked at.
pub(super) fn decide(st: &State, node: &str, req: &Request, caller: &Caller) -> Decision {
    let spec = st.mesh.nodes.get(node);
    let token_digest = match caller {
        // Renewal: the node's own certificate vouched for it (auth checked the node exists).
        Caller::Node(n) if n == node => None,
        Caller::Bootstrap(token) => {
            let digest = sha256_hex(token.as_bytes());
            let expected = spec
                .and_then(|s| s.token_sha256.as_deref())
                .unwrap_or(NO_TOKEN);
            if !same_digest(&digest, expected) || expected == NO_TOKEN {
                tracing::warn!(node, "certificate refused: the token is not this node's");
                return refuse(401, "bad-token", "the bootstrap token is not this node's");
            }
            Some(digest)
        }
        _ => {
            return refuse(
                403,
                "other-node",
                "a node gets certificates for itself only",
            );
        }
    };
    let Some(spec) = spec.filter(|s| s.identity.is_some()) else {
        return Decision::Refuse(Response::error(
            409,
            &format!("node `{node}` has no identity in the mesh"),
        ));
    };
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Decision::Refuse(Response::error(400, "invalid JSON"));
    };
    let key = body["public_key"]
        .as_str()
        .ok_or_else(|| "public_key: expected a P-256 public key in hex".to_string())
        .and_then(|k| {
            super::super::ca::public_key_bytes(k)
                .map(|raw| (k.to_string(), raw))
                .map_err(|e| e.to_string())
        });
    // Checked before a token is spent on it.
    let (public_key, raw) = match key {
        Ok(k) => k,
        Err(e) => return Decision::Refuse(Response::error(400, &e)),
    };
    let Some(digest) = token_digest else {
        return Decision::Issue {
            public_key,
            spend: None,
        };
    };
    if spec.token_expires.is_some_and(|t| now_secs() >= t) {
        return refuse(
            403,
            "token-expired",
            "the bootstrap token has expired: give the node a new one",
        );
    }
    let key_digest = sha256_hex(&raw);
    match st.spent.get(node) {
        Some(s) if s.token_sha256 == digest && s.public_key_sha256 != key_digest => {
            tracing::warn!(
                node,
                "certificate refused: a bootstrap token used a second time"
            );
            refuse(
                403,
                "token-spent",
                "the bootstrap token was used already: a node renews with its certificate, or is given a new token",
            )
        }
        // The same request again: its answer was lost on the way.
        Some(s) if s.token_sha256 == digest => Decision::Issue {
            public_key,
            spend: None,
        },
        _ => Decision::Issue {
            public_key,
            spend: Some(Spent {
                token_sha256: digest,
                public_key_sha256: key_digest,
                at: now_secs(),
                rev: 0,
            }),
        },
    }
}

/// Issues `node`'s certificate over `public_key` under the issuing authority.
pub(super) fn issue(st: &mut State, node: &str, public_key: &str) -> Response {
    let Some(id) = st.mesh.nodes.get(node).and_then(|s| s.identity.clone()) else {
        return Response::error(409, &format!("node `{node}` has no identity in the mesh"));
    };
    let (ns, sa) = id
        .rsplit_once("/sa/")
        .map(|(head, sa)| (head.rsplit('/').next().unwrap_or_default(), sa))
        .unwrap_or_default();
    let dns = crate::mesh::model::identity_dns_name(&st.mesh.trust_domain, ns, sa);
    let ttl = st.mesh.ca.cert_ttl;
    match st.ca.current.issue(public_key, &id, &dns, node, ttl) {
        Ok((cert, expires)) => {
            st.ca.issued += 1;
            if let Some(n) = st.nodes.get_mut(node) {
                n.cert_expires_unix = Some(expires);
            }
            let (bundle_mark, issuer_mark) = st.ca.marks();
            Response::json(
                200,
                json!({
                    "identity": id,
                    "node": node,
                    "cert": cert,
                    "bundle": st.ca.bundle(),
                    "expires_unix": expires,
                    "marks": { "bundle": bundle_mark, "issuer": issuer_mark },
                })
                .to_string()
                    + "\n",
            )
        }
        Err(e) => Response::error(400, &e.to_string()),
    }
}

/// The whole call without a store: decide, record a spent token (on disk, synced, before the
/// certificate leaves, when there is a state file: a restart must not make it good again),
/// issue.
pub(super) fn certificate(st: &mut State, node: &str, req: &Request, caller: &Caller) -> Response {
    match decide(st, node, req, caller) {
        Decision::Refuse(r) => r,
        Decision::Issue { public_key, spend } => {
            if let Some(s) = spend {
                let before = st.spent.insert(node.to_string(), s);
                if let Some(path) = st.state_file.clone() {
                    if let Err(e) = super::persist_now(&path, &st.saved()) {
                        match before {
                            Some(b) => st.spent.insert(node.to_string(), b),
                            None => st.spent.remove(node),
                        };
                        tracing::error!(error = %e, "cannot record a spent token; no certificate issued");
                        return Response::error(
                            503,
                            "the control plane cannot record the token as spent",
                        );
                    }
                }
                st.dirty = true;
            }
            issue(st, node, &public_key)
        }
    }
}
