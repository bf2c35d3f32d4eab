// The medkit operator dashboard: polls the gateway and renders health, recoveries and incidents.
// Every value from the API is written with textContent, never as HTML, so a service name or a
// summary cannot inject markup. The operator token stays in this tab's sessionStorage.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(1, Number(params.get("refresh")) || 3) * 1000;
const DECISIONS = ["approve", "abort", "resolve", "retry"];
const DETECTOR_KEYS = [["anomaly-", "anomaly watcher"], ["host-", "host forecaster"]];

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("medkit.token") || ""; }
function operator() { return sessionStorage.getItem("medkit.operator") || ""; }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(row, content, cls) {
  const td = el("td", null, cls);
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  row.appendChild(td);
  return td;
}

function badge(status) {
  const span = el("span", status, "badge " + status);
  span.dataset.status = status;
  return span;
}

function link(text, href) {
  if (!href) return el("span", text);
  const a = el("a", text);
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener";
  return a;
}

function span(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

function fill(tableId, rows, empty, columns) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    const td = cell(tr, empty, "empty");
    td.colSpan = columns;
    body.appendChild(tr);
    return;
  }
  for (const row of rows) body.appendChild(row);
}

function show(id, message) {
  const box = $(id);
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : response.statusText;
    throw new Error(response.status + ": " + detail);
  }
  return body;
}

function renderHealth(health) {
  const fleet = $("fleet");
  fleet.className = "badge " + health.status;
  fleet.dataset.status = health.status;
  fleet.textContent = "fleet: " + health.status + (health.score === null ? "" : " (" + health.score + ")");
  fill("services", health.services.map((s) => {
    const tr = el("tr");
    tr.dataset.service = s.service;
    cell(tr, s.service);
    cell(tr, badge(s.status));
    cell(tr, s.score === null ? "-" : s.score, "score");
    cell(tr, s.failing_rounds + " / " + s.failure_threshold);
    const probes = el("div");
    for (const p of s.probes) {
      const latency = p.latency_ms === null ? "" : " " + Math.round(p.latency_ms) + " ms";
      const budget = p.threshold_ms === null ? "" : " of " + Math.round(p.threshold_ms) + " ms";
      probes.appendChild(el("span", p.probe + ": " + p.score + (p.healthy ? "" : " FAILING") + latency + budget,
                            "probe"));
    }
    cell(tr, probes);
    cell(tr, when(s.last_round_at));
    return tr;
  }), "no service has health polling enabled", 6);
}

async function decide(workflowId, kind) {
  if (!operator()) {
    $("notice").className = "error";
    show("notice", "enter your operator name (top right) before deciding");
    return;
  }
  try {
    const verdict = await api("/v1/recoveries/" + encodeURIComponent(workflowId) + "/" + kind, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ operator: operator(), reason: $("reason").value || "from the dashboard" }),
    });
    $("notice").className = "notice";
    show("notice", workflowId + ": " + verdict.message);
  } catch (err) {
    $("notice").className = "error";
    show("notice", workflowId + ": " + err.message);
  }
  refresh();
}

function renderRecoveries(snapshot) {
  show("recoveries-error", snapshot.recoveries_error);
  fill("recoveries", snapshot.recoveries.map((r) => {
    const tr = el("tr");
    tr.dataset.workflowId = r.workflow_id;
    tr.dataset.phase = r.phase;
    const name = el("div");
    name.appendChild(link(r.workflow_id, r.temporal_url));
    name.appendChild(el("div", r.service + (r.severity ? " · " + r.severity : "") + (r.dry_run ? " · dry-run" : ""),
                        "muted"));
    cell(tr, name);
    cell(tr, r.phase + (r.current_step ? " (" + r.current_step + ")" : ""), "phase");
    cell(tr, span(r.age_seconds));
    const pending = r.pending_decision;
    cell(tr, r.status_error ? "unknown: " + r.status_error
      : pending ? pending.kind + (pending.step ? " of " + pending.step : "") + ": " + pending.allowed.join(", ")
                : "none", "pending");
    cell(tr, pending && pending.deadline
      ? when(pending.deadline) + " (in " + span((new Date(pending.deadline) - Date.now()) / 1000) + ")" : "");
    const recent = el("ul", null, "timeline");
    for (const entry of r.recent) recent.appendChild(el("li", entry.reason));
    cell(tr, recent);
    const buttons = el("div");
    const allowed = pending ? pending.allowed : [];
    for (const kind of DECISIONS) {
      const button = el("button", kind, "decide" + (allowed.includes(kind) ? " allowed" : ""));
      button.type = "button";
      button.dataset.decision = kind;
      button.title = allowed.includes(kind) ? "the recovery is waiting for this" : "the recovery may refuse it";
      button.addEventListener("click", () => decide(r.workflow_id, kind));
      buttons.appendChild(button);
    }
    cell(tr, buttons);
    return tr;
  }), "no recovery is running", 7);
}

function renderAlerts(snapshot) {
  const alerts = [];
  for (const r of snapshot.recoveries) {
    const detector = DETECTOR_KEYS.find(([prefix]) => r.incident_key.startsWith(prefix));
    if (!detector) continue;
    const tr = el("tr");
    cell(tr, link(r.workflow_id, r.temporal_url));
    cell(tr, detector[1]);
    cell(tr, r.phase);
    cell(tr, span(r.age_seconds));
    alerts.push(tr);
  }
  fill("alerts", alerts, "no forecaster or anomaly alert is open", 4);
  fill("series", snapshot.series.map((s) => {
    const tr = el("tr");
    cell(tr, s.series);
    cell(tr, s.service);
    cell(tr, s.points);
    cell(tr, when(s.last_point_at));
    cell(tr, s.threshold);
    cell(tr, when(s.cooling_until));
    return tr;
  }), "no pushed series", 6);
}

function renderIncidents(snapshot) {
  show("incidents-error", snapshot.incidents_error);
  fill("incidents", snapshot.incidents.map((i) => {
    const tr = el("tr");
    cell(tr, link(i.workflow_id, i.temporal_url));
    cell(tr, i.severity || "-");
    cell(tr, i.outcome ? i.outcome : i.phase + " (running)");
    cell(tr, when(i.started_at));
    cell(tr, span(i.duration_seconds));
    return tr;
  }), "no incident recorded in the last 30 days", 5);
  fill("mttr", snapshot.mttr.map((m) => {
    const tr = el("tr");
    cell(tr, m.service);
    cell(tr, m.incidents);
    cell(tr, span(m.mttr_seconds));
    return tr;
  }), "no repaired incident in the last 30 days", 3);
}

let inFlight = false;

async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    if (token()) {
      const snapshot = await api("/v1/dashboard");
      renderHealth(snapshot.health);
      renderRecoveries(snapshot);
      renderAlerts(snapshot);
      renderIncidents(snapshot);
    } else {
      renderHealth(await api("/v1/health"));
      show("recoveries-error", "enter the operator token (top right) to see recoveries and incidents");
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    show("error", "");
  } catch (err) {
    show("error", "refresh failed: " + err.message);
  } finally {
    inFlight = false;
  }
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("medkit.token", $("token").value.trim());
  sessionStorage.setItem("medkit.operator", $("operator").value.trim());
  $("token").value = "";
  refresh();
});
$("operator").value = operator();
refresh();
setInterval(refresh, REFRESH_MS);
