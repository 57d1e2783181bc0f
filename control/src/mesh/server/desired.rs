//! The desired state through the API: read whole or by JSON pointer, changed only against the
//! version it was read at (`If-Match`), checked whole before anything changes.

use serde_json::{Value, json};

use super::super::model::Mesh;
use super::*;
use crate::http::{Request, Response};

/// The JSON pointer after `/v1/config` in a path.
pub(super) fn config_pointer(path: &str) -> &str {
    path.strip_prefix("/v1/config").unwrap_or_default()
}

/// `GET /v1/config[/pointer]`: the desired state (or a part), with its version.
pub(super) fn get_config(st: &State, pointer: &str) -> Response {
    let value = if pointer.is_empty() || pointer == "/" {
        Some(&st.mesh.doc)
    } else {
        st.mesh.doc.pointer(pointer)
    };
    match value {
        Some(v) => {
            let key = if pointer.is_empty() || pointer == "/" {
                "config"
            } else {
                "value"
            };
            let mut r = Response::json(
                200,
                format!("{{\"version\":{},\"{key}\":{v}}}\n", st.version),
            );
            r.etag = Some(st.version);
            r
        }
        None => Response::error(404, "no such field"),
    }
}

/// `PUT` or `DELETE /v1/config[/pointer]` with `If-Match: VERSION`: changes the desired state,
/// or refuses with every error and changes nothing.
pub(super) fn edit_config(st: &mut State, req: &Request, pointer: &str) -> Response {
    let Some(expected) = req.if_match.as_deref() else {
        return if_match_required();
    };
    if expected != st.version.to_string() && expected != "*" {
        return conflict(st);
    }
    let mut doc = st.mesh.doc.clone();
    if let Err(r) = apply_edit(&mut doc, req, pointer) {
        return r;
    }
    let files = crate::mesh::model::api_may_not_name_files(&st.mesh.doc, &doc);
    if !files.is_empty() {
        return invalid(&files);
    }
    match Mesh::check(doc) {
        Ok(m) => {
            if m.bind != st.mesh.bind {
                tracing::warn!("bind changes take effect on restart");
            }
            st.mesh = m;
            st.changed();
            tracing::info!(
                version = st.version,
                "desired state changed through the API"
            );
            let mut r = Response::json(200, json!({ "version": st.version }).to_string() + "\n");
            r.etag = Some(st.version);
            r
        }
        Err(errs) => invalid(&errs),
    }
}

pub(super) fn if_match_required() -> Response {
    Response::error(
        428,
        "If-Match: the version this change was made against is required (GET /v1/config)",
    )
}

/// 409: the change was made against an older desired state.
pub(super) fn conflict(st: &State) -> Response {
    let mut r = Response::json(
        409,
        json!({
            "error": "the desired state changed since that version; read it again",
            "version": st.version,
        })
        .to_string()
            + "\n",
    );
    r.etag = Some(st.version);
    r
}

/// 422 with every error, by field.
pub(super) fn invalid(errs: &[impl ToString]) -> Response {
    Response::json(
        422,
        json!({ "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>() }).to_string()
            + "\n",
    )
}

/// Edits `doc` at a JSON pointer: PUT sets (a new key of a mapping, an item of a list, or `-`
/// or the length to append), DELETE removes.
pub fn apply_edit(doc: &mut Value, req: &Request, pointer: &str) -> Result<(), Response> {
    let value = if req.method == "PUT" {
        Some(
            serde_json::from_slice::<Value>(&req.body)
                .map_err(|e| Response::error(400, &format!("invalid JSON: {e}")))?,
        )
    } else {
        None
    };
    let pointer = pointer.trim_end_matches('/');
    if pointer.is_empty() {
        return match value {
            Some(v) => {
                *doc = v;
                Ok(())
            }
            None => Err(Response::error(405, "the desired state cannot be deleted")),
        };
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    let missing = || Response::error(404, "no such field");
    let parent = if parent.is_empty() {
        Some(doc)
    } else {
        doc.pointer_mut(parent)
    };
    match (parent.ok_or_else(missing)?, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key, v);
        }
        (Value::Object(m), None) => {
            m.remove(&key).ok_or_else(missing)?;
        }
        (Value::Array(a), v) => {
            let len = a.len();
            let i = if key == "-" {
                len
            } else {
                key.parse().map_err(|_| missing())?
            };
            match v {
                Some(v) if i < len => a[i] = v,
                Some(v) if i == len => a.push(v),
                None if i < len => {
                    a.remove(i);
                }
                _ => return Err(missing()),
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}
