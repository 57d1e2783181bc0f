"use strict";
// The control plane's mesh page. Everything it shows comes from this control plane's API, with
// the admin token the operator logs in with: /v1/nodes (sync state), /v1/clusters (endpoints,
// with health and ejection as the proxies report them) and /v1/stats (golden signals per cluster,
// summed over the proxies' reports: requests/s, success rate, p50 and p99 over the last 30 s, and
// totals since the proxies started). The token stays in this tab (sessionStorage) and goes only
// to this origin; every value is written as text, never as markup.

const KEY = "ringmesh-token";
const params = new URLSearchParams(location.search);
const EVERY = Math.max(500, Number(params.get("refresh")) || 2000);
let timer = null;
let refreshes = 0;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(KEY); }

async function api(path, t) {
  const r = await fetch(path, {
    headers: { "Authorization": "Bearer " + (t || token()) },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = new Error((body && body.error) || ("HTTP " + r.status));
    e.status = r.status;
    throw e;
  }
  return body;
}

function showLogin(message) {
  if (timer) { clearInterval(timer); timer = null; }
  sessionStorage.removeItem(KEY);
  $("mesh").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("status").textContent = "not logged in";
  $("token").focus();
}

function start() {
  $("login").hidden = true;
  $("mesh").hidden = false;
  $("logout").hidden = false;
  refresh();
  timer = setInterval(refresh, EVERY);
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  $("token").value = "";
  if (!t) { return; }
  try {
    await api("/v1/nodes", t);
  } catch (e) {
    const why = e.status === 401 || e.status === 403
      ? "this token is not an admin's (" + e.message + ")"
      : "the control plane refused: " + e.message;
    $("login-error").textContent = why;
    return;
  }
  sessionStorage.setItem(KEY, t);
  $("login-error").textContent = "";
  start();
});

$("logout").addEventListener("click", () => showLogin("logged out"));

// Formatting.
const fixed = (x, d) => (x === null || x === undefined || Number.isNaN(x)) ? "—" : x.toFixed(d);
const percent = (r) => (r === null || r === undefined) ? "—" : fixed(Math.min(1, r) * 100, 2) + "%";
const millis = (s) => (s === null || s === undefined) ? "—" : fixed(s * 1000, 1) + " ms";
function ago(seconds) {
  if (seconds === null || seconds === undefined) { return "never"; }
  if (seconds < 60) { return Math.round(seconds) + " s ago"; }
  if (seconds < 3600) { return Math.round(seconds / 60) + " min ago"; }
  return fixed(seconds / 3600, 1) + " h ago";
}
function until(seconds) {
  if (seconds < 0) { return "expired"; }
  if (seconds < 3600) { return "in " + Math.round(seconds / 60) + " min"; }
  if (seconds < 172800) { return "in " + fixed(seconds / 3600, 1) + " h"; }
  return "in " + Math.round(seconds / 86400) + " days";
}

// A table body refilled with rows: [key, [[field, text, className?], ...]].
function fill(id, rows, empty) {
  const body = $(id).tBodies[0];
  const out = document.createDocumentFragment();
  for (const [key, cells] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.key = key;
    for (const [field, text, cls] of cells) {
      const td = document.createElement("td");
      td.dataset.key = field;
      td.textContent = text;
      if (cls) { td.className = cls; }
      tr.appendChild(td);
    }
    out.appendChild(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = $(id).tHead.rows[0].cells.length;
    td.className = "l muted";
    td.textContent = empty;
    tr.appendChild(td);
    out.appendChild(tr);
  }
  body.replaceChildren(out);
}

function renderNodes(nodes) {
  const now = nodes.now_unix_ms / 1000;
  const rows = Object.entries(nodes.nodes || {}).map(([name, n]) => {
    const refusal = n.last_rejection ? "v" + n.last_rejection.version + ": " + n.last_rejection.error : "—";
    const cert = n.cert_expires_unix ? until(n.cert_expires_unix - now) : "—";
    return [name, [
      ["name", name, "l"],
      ["in_sync", n.in_sync ? "yes" : "no", "l " + (n.in_sync ? "ok" : "bad")],
      ["version", String(n.version)],
      ["applied", n.applied_version === null ? "—" : String(n.applied_version)],
      ["last_contact", ago(n.last_seen_seconds_ago)],
      ["cert_expires", cert],
      ["refusal", refusal, "l" + (n.last_rejection ? " bad" : "")],
    ]];
  });
  fill("nodes", rows, "no nodes in the mesh file");
}

function renderClusters(clusters, stats) {
  $("window").textContent = "(rates and latency over the last " + stats.window_seconds + " s, as the proxies report them)";
  const rows = Object.entries(clusters.clusters || {}).map(([name, c]) => {
    const s = (stats.clusters || {})[name] || { window: {}, total: {}, nodes: [] };
    const w = s.window, t = s.total;
    const bad = (r) => (r !== null && r !== undefined && r < 0.99) ? "bad" : "";
    return [name, [
      ["name", name, "l"],
      ["rps", fixed(w.requests_per_second || 0, 1)],
      ["success", percent(w.success_rate), bad(w.success_rate)],
      ["p50", millis(w.p50_seconds)],
      ["p99", millis(w.p99_seconds)],
      ["requests", String(t.requests || 0)],
      ["errors", String(t.errors || 0)],
      ["total_success", percent(t.success_rate), bad(t.success_rate)],
      ["endpoints", String((c.endpoints || []).length)],
      ["nodes", (s.nodes || []).join(", ") || "—", "l"],
    ]];
  });
  fill("clusters", rows, "no clusters in the mesh file");
  const eps = [];
  for (const [name, c] of Object.entries(clusters.clusters || {})) {
    for (const e of c.endpoints || []) {
      const health = e.health || "unknown";
      const ejected = (e.ejected_by || []).join(", ");
      eps.push([name + " " + e.addr, [
        ["cluster", name, "l"],
        ["addr", e.addr, "l"],
        ["source", e.source + (e.id ? " (" + e.id + ")" : e.name ? " (" + e.name + ")" : ""), "l"],
        ["zone", e.zone || e.reported_zone || "—", "l"],
        ["weight", String(e.weight ?? e.reported_weight ?? "—")],
        ["health", health, "l " + (health === "healthy" ? "ok" : health === "unknown" ? "muted" : "bad")],
        ["ejected", ejected || "—", "l" + (ejected ? " bad" : "")],
      ]]);
    }
  }
  fill("endpoints", eps, "no endpoints");
}

async function refresh() {
  try {
    const [nodes, clusters, stats] = await Promise.all([
      api("/v1/nodes"), api("/v1/clusters"), api("/v1/stats"),
    ]);
    renderNodes(nodes);
    renderClusters(clusters, stats);
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    $("status").textContent = "version " + nodes.version + " · refreshed " +
      new Date().toLocaleTimeString() + " · every " + (EVERY / 1000) + " s";
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      showLogin("the control plane no longer takes this token: " + e.message);
      return;
    }
    $("status").textContent = "cannot reach the control plane: " + e.message + " (retrying)";
  }
}

if (token()) { start(); } else { showLogin(""); }
