// The monitors' dashboard: plain JS, no external dependencies. Token in sessionStorage; every
// call sends it as a bearer token. Live updates read the SSE stream with fetch (so the token
// goes in a header, never in a URL).
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
let token = sessionStorage.getItem("cart-course-token");
let liveAbort = null;
let refreshTimer = null;

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + token } });
  if (r.status === 401) { logout("Your token was not accepted (unknown or revoked)."); throw new Error("401"); }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
    const error = new Error(r.status + ": " + detail);
    error.status = r.status; error.detail = detail;
    throw error;
  }
  return (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

function logout(message) {
  sessionStorage.removeItem("cart-course-token");
  token = null;
  if (liveAbort) liveAbort.abort();
  $("#login").hidden = false; $("#view").innerHTML = ""; $("#logout").hidden = true; $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  try {
    await api("/v1/patients?probe=1");
  } catch (e) {
    if (String(e.message).startsWith("403")) { /* role without patient access: still a valid token */ }
    else if (e.message === "401") return;
  }
  sessionStorage.setItem("cart-course-token", token);
  start();
});
$("#logout").addEventListener("click", () => logout(""));

function start() {
  $("#login").hidden = true; $("#logout").hidden = false;
  $("#who").textContent = "logged in";
  startLive();
  route();
}

window.addEventListener("hashchange", route);

// The roles whose tokens can use the dashboard (the board and the views need one of them).
const DASHBOARD_ROLES = ["clinician", "monitor", "auditor"];

function showRefused(e) {
  $("#view").innerHTML = `<div id="refused" class="error"><h1>This token cannot use the dashboard</h1>
    <p>The dashboard is for ${DASHBOARD_ROLES.map((r) => `<b>${esc(r)}</b>`).join(", ")} tokens (the audit report: auditor only).
    Log out and log in with one of those.</p><p class="small">The server said: ${esc(e.detail || e.message)}</p></div>`;
}

function route() {
  if (!token) return logout("");
  const parts = (location.hash || "#/board").slice(2).split("/").map(decodeURIComponent);
  if (parts[0] === "patient" && parts[1]) return showPatient(parts[1]);
  if (parts[0] === "report" && parts[1]) return showReport(parts[1]);
  return showBoard();
}

// ---------------------------------------------------------------------------------------------
// Board
// ---------------------------------------------------------------------------------------------
const filters = { state: "", overdue: false, toxicity: false, text: "" };

async function showBoard() {
  const view = $("#view");
  view.innerHTML = `<h1>Board</h1><div class="cards" id="cards"></div>
    <div class="filters">
      <label>State <select id="f-state"><option value="">all</option></select></label>
      <label><input type="checkbox" id="f-overdue"> overdue only</label>
      <label><input type="checkbox" id="f-toxicity"> open toxicity only</label>
      <label>Patient <input id="f-text" placeholder="P-00..." size="10"></label>
      <span class="small" id="board-status"></span>
    </div>
    <table id="board"><thead><tr><th>Patient</th><th>State</th><th>Course</th><th>Next action</th><th>Due</th>
      <th>Dose delivered / planned</th><th>Open toxicity</th><th>Response</th><th>Last event (clinical)</th></tr></thead>
      <tbody></tbody></table>`;
  let protocol;
  try { protocol = await api("/v1/protocol"); }
  catch (e) {
    if (e.status === 403) return showRefused(e);
    $("#board-status").textContent = e.message; return;
  }
  const sel = $("#f-state");
  for (const s of protocol.states) sel.insertAdjacentHTML("beforeend", `<option>${esc(s)}</option>`);
  sel.value = filters.state; $("#f-overdue").checked = filters.overdue; $("#f-toxicity").checked = filters.toxicity; $("#f-text").value = filters.text;
  sel.onchange = () => { filters.state = sel.value; loadBoard(); };
  $("#f-overdue").onchange = (e) => { filters.overdue = e.target.checked; loadBoard(); };
  $("#f-toxicity").onchange = (e) => { filters.toxicity = e.target.checked; loadBoard(); };
  $("#f-text").oninput = (e) => { filters.text = e.target.value.trim(); loadBoard(); };
  await loadBoard();
}

const cells = (v) => (v == null ? "–" : Number(v).toExponential(2));

async function loadBoard() {
  if (!$("#board")) return;
  const q = new URLSearchParams();
  if (filters.state) q.set("state", filters.state);
  if (filters.overdue) q.set("overdue", "true");
  if (filters.toxicity) q.set("toxicity", "true");
  let rows;
  try { rows = await api("/v1/board?" + q); }
  catch (e) {
    if (e.status === 403) return showRefused(e);
    if ($("#board-status")) $("#board-status").textContent = e.message;
    return;
  }
  if (filters.text) rows = rows.filter((r) => r.patient_id.toLowerCase().includes(filters.text.toLowerCase()));
  const body = $("#board tbody");
  body.innerHTML = rows.map((r) => {
    const cls = [r.overdue ? "overdue" : "", r.open_toxicities > 0 ? "toxicity" : ""].join(" ");
    const tox = r.open_toxicities > 0
      ? `<span class="badge ${r.severe_open ? "red" : "orange"}">${r.open_toxicities} open, grade ${esc(r.max_open_grade)}</span>${r.hold ? ' <span class="badge red">HOLD</span>' : ""}`
      : "";
    const due = r.due_on ? esc(r.due_on) + (r.overdue ? ` <span class="badge orange">${r.days_overdue} d overdue</span>` : "") : "–";
    return `<tr class="${cls}" data-patient="${esc(r.patient_id)}"><td><a href="#/patient/${encodeURIComponent(r.patient_id)}">${esc(r.patient_id)}</a></td>
      <td>${esc(r.state)}</td><td>${esc(r.course_number)}</td><td>${esc(r.next_action || "–")}</td><td>${due}</td>
      <td>${cells(r.delivered_cells)} / ${cells(r.planned_cells)}</td><td>${tox}</td><td>${esc(r.response || "–")}</td>
      <td class="small">${esc(r.last_occurred_at || "")}</td></tr>`;
  }).join("");
  $("#board-status").textContent = `${rows.length} patients`;
  try {
    const counts = await api("/v1/counts");
    $("#cards").innerHTML = Object.entries(counts.state || {}).map(([k, v]) => `<div class="card"><b>${v}</b>${esc(k)}</div>`).join("");
  } catch (e) { /* counts are optional */ }
}

// ---------------------------------------------------------------------------------------------
// Patient: summary, state diagram with the path taken, timeline
// ---------------------------------------------------------------------------------------------
async function showPatient(pid) {
  const view = $("#view");
  view.innerHTML = `<p><a href="#/board">← board</a></p><h1>Patient ${esc(pid)}</h1><div id="p-body">loading…</div>`;
  let summary, history, protocol;
  try {
    [summary, history, protocol] = await Promise.all([
      api(`/v1/patients/${encodeURIComponent(pid)}`),
      api(`/v1/patients/${encodeURIComponent(pid)}/history`),
      api("/v1/protocol"),
    ]);
  } catch (e) {
    if (e.status === 403) return showRefused(e);
    $("#p-body").innerHTML = `<p class="error">${esc(e.message)}</p>`; return;
  }
  const tox = summary.open_toxicities.map((t) => `<span class="tox">${esc(t.kind)}${t.term ? " (" + esc(t.term) + ")" : ""} grade ${esc(t.grade)}</span>`).join(", ") || "none";
  // moves that changed the state (as the audit report's path): not corrections or same-state events
  const moves = history.filter((e) => e.to_state && e.from_state && e.to_state !== e.from_state);
  $("#p-body").innerHTML = `
    <div class="cards">
      <div class="card"><b id="p-state">${esc(summary.state)}</b>state</div>
      <div class="card"><b>${esc(summary.course_number)}</b>course</div>
      <div class="card"><b>${esc(summary.version)}</b>version</div>
      <div class="card"><b>${tox}</b>open toxicity</div>
    </div>
    <p>Allowed now: ${summary.allowed_moves.map((m) => `<span class="badge">${esc(m)}</span>`).join(" ") || "nothing (terminal)"}
       · <a id="report-link" href="#/report/${encodeURIComponent(pid)}">Audit report</a></p>
    <h2>State diagram (path taken)</h2>
    <div id="diagram">${diagram(protocol, moves, summary.state)}</div>
    <h2>Timeline</h2>
    <table id="timeline"><thead><tr><th>v</th><th>Clinical time</th><th>Recorded (UTC)</th><th>Event</th><th>Move</th><th>Who</th><th>Reason / details</th></tr></thead><tbody>
    ${history.map((e) => `<tr><td>${e.version}</td><td class="small">${esc(e.occurred_at || "")}</td><td class="small">${esc(e.recorded_at)}</td>
      <td>${esc(e.type)}</td><td>${e.from_state ? esc(e.from_state) + " → " + esc(e.to_state) : ""}</td>
      <td>${esc(e.actor || "")} <span class="small">${esc(e.role || "")}</span></td>
      <td>${esc(e.reason || "")}${e.outcome && e.outcome.deviations && e.outcome.deviations.length ? '<br><span class="badge orange">deviation</span> ' + esc(e.outcome.deviations.join("; ")) : ""}${e.corrects ? " corrects v" + esc(e.corrects) : ""}${e.milestone ? " signed " + esc(e.milestone) + " (" + esc(e.meaning) + ")" : ""}</td></tr>`).join("")}
    </tbody></table><section id="queries-panel"></section>`;
  // data queries (issue 17): the panel of static/queries.js
  if (window.cartQueries) window.cartQueries.mount($("#queries-panel"), { patientId: pid, api });
}

function diagram(protocol, moves, current) {
  // Layered layout: each state's column is its distance from "candidate".
  const depth = { candidate: 0 };
  let changed = true;
  while (changed) {
    changed = false;
    for (const t of protocol.transitions) {
      if (depth[t.source] != null && t.source !== t.dest && (depth[t.dest] == null || depth[t.dest] > depth[t.source] + 1) && !protocol.terminal.includes(t.source)) {
        if (depth[t.dest] == null) { depth[t.dest] = depth[t.source] + 1; changed = true; }
      }
    }
  }
  for (const s of protocol.states) if (depth[s] == null) depth[s] = 0;
  const cols = {};
  for (const s of protocol.states) (cols[depth[s]] = cols[depth[s]] || []).push(s);
  const pos = {};
  const W = 118, H = 34, GX = 34, GY = 16;
  for (const [d, states] of Object.entries(cols)) states.forEach((s, i) => { pos[s] = { x: 10 + d * (W + GX), y: 10 + i * (H + GY) }; });
  const width = 20 + Object.keys(cols).length * (W + GX), height = 20 + Math.max(...Object.values(cols).map((c) => c.length)) * (H + GY);
  const taken = new Set(moves.map((m) => m.from_state + ">" + m.to_state));
  const visited = new Set(moves.flatMap((m) => [m.from_state, m.to_state]));
  const seen = new Set();
  let edges = "";
  for (const t of protocol.transitions) {
    const key = t.source + ">" + t.dest;
    if (seen.has(key) || t.source === t.dest) continue;
    seen.add(key);
    const a = pos[t.source], b = pos[t.dest];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const back = x2 <= x1;
    const d = back ? `M${a.x + W / 2},${a.y + H} C${a.x + W / 2},${a.y + H + 40} ${b.x + W / 2},${b.y + H + 40} ${b.x + W / 2},${b.y + H}`
      : `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`;
    edges += `<path class="edge${taken.has(key) ? " taken" : ""}" data-edge="${esc(key)}" d="${d}"><title>${esc(t.trigger)}</title></path>`;
  }
  const nodes = protocol.states.map((s) => {
    const p = pos[s];
    const cls = "node" + (visited.has(s) ? " visited" : "") + (s === current ? " current" : "");
    return `<g class="${cls}" data-state="${esc(s)}"><rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="6"></rect>
      <text x="${p.x + W / 2}" y="${p.y + H / 2 + 4}" text-anchor="middle">${esc(s)}</text></g>`;
  }).join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height + 40}" role="img" aria-label="state diagram">${edges}${nodes}</svg>
    <p class="small">Path: ${esc(["candidate", ...moves.map((m) => m.to_state)].join(" → "))}</p>`;
}

// ---------------------------------------------------------------------------------------------
// Report (the audit's printable HTML report; auditors)
// ---------------------------------------------------------------------------------------------
async function showReport(pid) {
  const view = $("#view");
  view.innerHTML = `<p><a href="#/patient/${encodeURIComponent(pid)}">← patient ${esc(pid)}</a></p><h1>Audit report ${esc(pid)}</h1><div id="r-body">loading…</div>`;
  try {
    const html = await api(`/v1/patients/${encodeURIComponent(pid)}/report.html`);
    $("#r-body").innerHTML = `<iframe id="report" sandbox="allow-same-origin allow-modals" title="audit report"></iframe>`;
    $("#report").srcdoc = html;
  } catch (e) {
    $("#r-body").innerHTML = `<p class="error">${esc(e.message)} (the audit report needs an auditor's token)</p>`;
  }
}

// ---------------------------------------------------------------------------------------------
// Live updates: Server-Sent Events read through fetch
// ---------------------------------------------------------------------------------------------
async function startLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = new AbortController();
  const signal = liveAbort.signal;
  let after = null;
  while (!signal.aborted && token) {
    try {
      const url = "/v1/events/stream" + (after != null ? "?after=" + after : "");
      const r = await fetch(url, { headers: { Authorization: "Bearer " + token }, signal });
      if (!r.ok) { $("#live").className = "live off"; return; }
      $("#live").className = "live on";
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          const id = block.split("\n").find((l) => l.startsWith("id: "));
          if (id) after = Number(id.slice(4));
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    $("#live").className = "live off";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function onEvent(event) {
  // Coalesce bursts: refresh the visible page at most every 500 ms.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    const hash = location.hash || "#/board";
    if (hash.startsWith("#/board") || hash === "") loadBoard();
    else if (hash === "#/patient/" + encodeURIComponent(event.patient_id)) showPatient(event.patient_id);
  }, 500);
}

if (token) start(); else logout("");
