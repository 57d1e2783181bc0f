//! The API's operator views: the mesh page, the mesh-wide stats the nodes report, and taps
//! through the control plane. Who may call each is decided before (`auth::permit`).

use super::auth::Route;
use super::*;
use crate::http::{Request, Response};

/// The page's files, self-contained: no script, style or font from anywhere else.
const PAGE_HTML: &[u8] = include_bytes!("../page/index.html");
const PAGE_JS: &[u8] = include_bytes!("../page/mesh.js");
const PAGE_CSS: &[u8] = include_bytes!("../page/mesh.css");

/// What the page may load and do: its own script and style, requests to this API, nothing
/// framed, no form posted anywhere.
const PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// Answers the operator views' routes; `None` for every other route.
pub(super) async fn answer(
    plane: &Plane,
    req: &Request,
    route: &Route<'_>,
    segs: &[&str],
) -> Option<Response> {
    Some(match (route, segs) {
        (Route::Page, [file]) => {
            let (ctype, body) = match *file {
                "mesh.js" => ("text/javascript; charset=utf-8", PAGE_JS),
                "mesh.css" => ("text/css; charset=utf-8", PAGE_CSS),
                _ => ("text/html; charset=utf-8", PAGE_HTML),
            };
            Response {
                headers: PAGE_HEADERS,
                ..Response::new(200, ctype, body)
            }
        }
        (Route::Stats, _) => {
            let mut observed = plane.observed.borrow_mut();
            let st = plane.st.borrow();
            observed.retain(&st.mesh);
            Response::json(200, observed.stats_json(&st.mesh).to_string() + "\n")
        }
        (Route::NodeStats { node }, _) => {
            if let Some(n) = plane.st.borrow_mut().nodes.get_mut(*node) {
                n.last_seen = Some(SystemTime::now());
            }
            let st = plane.st.borrow();
            plane
                .observed
                .borrow_mut()
                .ingest(&st.mesh, node, &req.body)
        }
        (Route::TapStart { node }, _) => {
            if !plane.st.borrow().mesh.nodes.contains_key(*node) {
                return Some(Response::error(
                    404,
                    &format!("no node named `{node}` in the mesh"),
                ));
            }
            let id = {
                let mut rng = plane.rng.borrow_mut();
                format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
            };
            let r = plane.taps.borrow_mut().start(node, &req.body, id);
            plane.tap_asked.notify();
            r
        }
        (Route::TapRead, [_, _, id]) => {
            taps::read(&plane.taps, &plane.tap_signal, &plane.stopping, id, req).await
        }
        (Route::TapStop, [_, _, id]) => plane.taps.borrow_mut().stop(id),
        (Route::TapPoll { node }, _) => {
            taps::poll(&plane.taps, &plane.tap_asked, &plane.stopping, node, req).await
        }
        (Route::TapEvents { node }, [_, _, _, _, id]) => {
            let r = plane.taps.borrow_mut().events(node, id, req);
            plane.tap_signal.notify();
            r
        }
        _ => return None,
    })
}
