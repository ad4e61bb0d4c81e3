// The monitors' dashboard: plain JS, served by the package (no CDN). Token in sessionStorage;
// every call sends it as a bearer token. Live updates read the SSE stream with fetch (so the
// token goes in a header, never in a URL). The words for states and actions come from the
// server (GET /v1/protocol/labels): this file holds no clinical vocabulary of its own.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const DAGRE = "/static/vendor/dagre-1.1.4/dagre.min.js";
const app = { token: sessionStorage.getItem("cart-course-token"), me: null, labels: null, liveAbort: null, refreshTimer: null, board: null };

// -------------------------------------------------------------------------------------------
// The API
// -------------------------------------------------------------------------------------------
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + app.token } });
  if (r.status === 401) { logout("Your token was not accepted (unknown or revoked)."); throw Object.assign(new Error("401"), { status: 401 }); }
  if (!r.ok) {
    let detail = r.statusText;
    try { const body = await r.json(); detail = body.message || body.detail || detail; } catch (e) { /* not JSON */ }
    throw Object.assign(new Error(r.status + ": " + detail), { status: r.status, detail });
  }
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r.text();
}

// -------------------------------------------------------------------------------------------
// Words, numbers, dates
// -------------------------------------------------------------------------------------------
const L = {
  state: (s) => (app.labels && app.labels.states[s]) || s || "",
  action: (a) => (app.labels && app.labels.actions[a]) || String(a || "").replace(/_/g, " "),
  done: (a) => (app.labels && app.labels.done[a]) || String(a || "").replace(/_/g, " "),
  response: (r) => (app.labels && app.labels.responses[r]) || r || "",
  toxicity: (k) => (app.labels && app.labels.toxicities[k]) || k || "",
};

/** "1 patient", "2 patients" (irregular plurals given). */
function plural(n, one, many) { return `${n} ${n === 1 ? one : (many || one + "s")}`; }

const SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹";
/** 55000000 -> "5.5 × 10⁷" */
function sci(n) {
  if (n == null || Number.isNaN(Number(n))) return "–";
  n = Number(n);
  if (n === 0) return "0";
  let e = Math.floor(Math.log10(Math.abs(n)));
  let m = Math.round((n / 10 ** e) * 10) / 10;
  if (Math.abs(m) >= 10) { m /= 10; e += 1; }
  const exp = String(e).replace("-", "⁻").replace(/\d/g, (d) => SUP[d]);
  return `${m.toFixed(1)} × 10${exp}`;
}
const pct = (part, whole) => (whole ? Math.round((100 * part) / whole) : null);

/** A dose: "5.5 × 10⁷ cells (98 % of plan)"; its cells/kg on hover and, for the keyboard, on
 *  focus (the dose is a tab stop; the stylesheet shows data-perkg beside it) and as its
 *  accessible description (title). */
function dose(delivered, planned, perKg) {
  if (delivered == null) return "–";
  const share = pct(delivered, planned);
  const title = perKg != null ? `${sci(perKg)} cells/kg` : "";
  const perKgAttrs = title ? ` tabindex="0" title="${esc(title)}" data-perkg="${esc(title)}"` : "";
  return `<span class="dose"${perKgAttrs}>${esc(sci(delivered))} cells${share != null ? ` (${share} % of plan)` : ""}</span>`;
}

// The time zone dates are written in: the site's when the server names one (me.site_time_zone,
// once sites exist), else the browser's. Said once, in the page's footer line.
const BROWSER_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone;
function timeZone() { return (app.me && app.me.site_time_zone) || BROWSER_TZ; }
function timeZoneNote() {
  return app.me && app.me.site_time_zone ? `Times in the site's time zone (${timeZone()}).` : `Times in your browser's time zone (${timeZone()}).`;
}
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
/** A calendar date ("2026-12-29" -> "29 Dec 2026"): a date, never shifted by a time zone. */
function fmtDay(iso) {
  if (!iso) return "";
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(iso).slice(0, 10));
  return m ? `${+m[3]} ${MONTHS[+m[2] - 1]} ${m[1]}` : String(iso);
}
let timeFormat = null;
/** A clinical or record time, in the display time zone: "26 Sep 2026, 16:12". */
function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  if (!timeFormat || timeFormat.zone !== timeZone()) {
    timeFormat = new Intl.DateTimeFormat("en-GB", { timeZone: timeZone(), year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    timeFormat.zone = timeZone();
  }
  const p = Object.fromEntries(timeFormat.formatToParts(d).map((x) => [x.type, x.value]));
  return `${+p.day} ${MONTHS[+p.month - 1]} ${p.year}, ${p.hour}:${p.minute}`;
}
/** ISO dates and times inside a sentence, written as the rest of the page writes them. */
function humanDates(text) {
  return String(text ?? "")
    .replace(/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?/g, (t) => fmtTime(t))
    .replace(/\b\d{4}-\d{2}-\d{2}\b/g, (d) => fmtDay(d));
}
function words(key) { const s = String(key).replace(/_/g, " "); return s.charAt(0).toUpperCase() + s.slice(1); }
/** A recorded value in words: {value, unit} -> "3.8 g/L", booleans -> yes/no, lists joined. */
function valueText(v) {
  if (v == null) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.map(valueText).join(", ");
  if (typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1) return valueText(v[keys[0]]);
    if ("value" in v && "unit" in v) {
      const unit = v.unit === "cells" ? "cells" : v.unit;
      const value = v.unit === "cells" || v.unit === "cells/kg" ? sci(v.value) : v.value;
      return `${value} ${unit}` + (v.uln != null ? ` (upper limit ${v.uln} ${v.uln_unit || ""})`.replace(/ \)$/, ")") : "");
    }
    return Object.entries(v).filter(([, x]) => x != null).map(([k, x]) => `${words(k).toLowerCase()} ${valueText(x)}`).join(", ");
  }
  if (typeof v === "string" && /^[a-z]+(_[a-z]+)+$/.test(v)) return v.replace(/_/g, " ");
  return humanDates(v);
}
/** An object as "Key: value" lines (HTML). */
function facts(obj, skip = []) {
  if (!obj || typeof obj !== "object") return "";
  return Object.entries(obj).filter(([k, v]) => v != null && !skip.includes(k) && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => `<span class="fact"><span class="k">${esc(words(k))}:</span> ${esc(valueText(v))}</span>`).join(" ");
}

// -------------------------------------------------------------------------------------------
// Log in, log out, who, navigation
// -------------------------------------------------------------------------------------------
function logout(message) {
  sessionStorage.removeItem("cart-course-token");
  app.token = null; app.me = null;
  if (app.liveAbort) app.liveAbort.abort();
  setLive(false, "Live updates are not connected (logged out)");
  $("#login").hidden = false; $("#view").innerHTML = ""; $("#logout").hidden = true; $("#who").textContent = ""; $("#nav").innerHTML = "";
  $("#login-error").textContent = message || "";
  document.title = "Log in — cart-course";
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  app.token = $("#token").value.trim();
  try { app.me = await api("/v1/me"); } catch (e) { if (e.status !== 401) $("#login-error").textContent = e.message; return; }
  sessionStorage.setItem("cart-course-token", app.token);
  $("#token").value = "";
  start();
});
$("#logout").addEventListener("click", () => logout(""));

async function start() {
  const labels = api("/v1/protocol/labels").catch(() => null); // 403 for admin/service tokens
  try { if (!app.me) app.me = await api("/v1/me"); } catch (e) { return; }
  $("#login").hidden = true; $("#logout").hidden = false;
  const me = app.me;
  $("#who").innerHTML = `Logged in as <b>${esc(me.name || me.actor)}</b> <span class="role">${esc(me.role)}</span>${me.sites ? ` <span class="role" id="who-sites">site ${esc(me.sites.join(", "))}</span>` : ""}`;
  // the Cohort page (its figures) is served at /cohort by the figures' routes
  $("#nav").innerHTML = me.may_view_board ? `<a href="#/board" id="nav-board">Board</a> <a href="/cohort" id="nav-cohort">Cohort</a>` : "";
  if (me.may_read_patients && me.may_view_board) {
    app.labels = await labels; // (none: identifiers shown as they are)
    startLive();
  } else {
    labels.catch(() => null);
    setLive(false, "Live updates are for clinician, monitor and auditor tokens");
  }
  route();
}

// A link to another page fires popstate and hashchange; back and forward after pushState fire
// popstate only: route once per change of address.
let routed = null;
const onAddress = () => { if (location.href !== routed) route(); };
window.addEventListener("hashchange", onAddress);
window.addEventListener("popstate", onAddress);

function route() {
  if (!app.token) return logout("");
  if (!app.me) return;
  routed = location.href;
  if (!app.me.may_view_board) return showRolePage();
  const [path, query] = (location.hash || "#/board").slice(1).split("?");
  const parts = path.slice(1).split("/").map(decodeURIComponent);
  if (parts[0] === "patient" && parts[1]) return showPatient(parts[1]);
  if (parts[0] === "report" && parts[1]) return showReport(parts[1]);
  return showBoard(new URLSearchParams(query || ""));
}

// After a move to another page of the dashboard, the keyboard starts at its heading (the first
// page of a visit keeps the browser's start: the skip link first).
let firstPage = true;
function focusMain(title) {
  document.title = title + " — cart-course";
  const h1 = $("#view h1");
  if (!firstPage && h1 && !$("#view").contains(document.activeElement)) { h1.tabIndex = -1; h1.focus({ preventScroll: true }); }
  firstPage = false;
}

// Admin and service tokens: what they are for, and where to go.
function showRolePage() {
  const role = app.me.role;
  const pages = {
    admin: `<h1>This is an administrator's token</h1>
      <p>Administrators manage who may use cart-course: they add and revoke tokens and read the audit-access log.
      They do not see patients, so the board and patient pages are not for this token.</p>
      <h2>Where to go</h2>
      <ul>
        <li>Command line: <code>cart-course tokens add ACTOR ROLE</code>, <code>cart-course tokens list</code>, <code>cart-course tokens revoke TOKEN_ID</code>.</li>
        <li>API: <code>GET /v1/tokens</code>, <code>POST /v1/tokens</code>, <code>DELETE /v1/tokens/{id}</code>; <code>GET /metrics</code> for monitoring. See the <a href="/schema">API documentation</a>.</li>
        <li>To look at patients, log in with a clinician's, monitor's or auditor's token.</li>
      </ul>`,
    service: `<h1>This is a service token</h1>
      <p>Service tokens belong to systems (an EHR, a lab, the pharmacy) that record what happened to patients, through the API.
      They record commands; the board and the patient pages are for people.</p>
      <h2>Where to go</h2>
      <ul>
        <li>API: <code>POST /v1/commands</code> (or <code>POST /v1/patients/{id}/commands/{command}</code>), read back with <code>GET /v1/patients/{id}</code>. See the <a href="/schema">API documentation</a>.</li>
        <li>Command line: <code>cart-course record --help</code> and <code>cart-course ingest --help</code> (JSON Lines).</li>
        <li>To look at patients, log in with a clinician's, monitor's or auditor's token.</li>
      </ul>`,
  };
  $("#view").innerHTML = `<section id="role-page" class="panel">${pages[role] || `<h1>This token cannot use the dashboard</h1><p>Role ${esc(role)}.</p>`}
    <p class="small">The dashboard is for clinician, monitor and auditor tokens.</p></section>`;
  focusMain("Token " + role);
}

// -------------------------------------------------------------------------------------------
// Live updates: Server-Sent Events read through fetch; green only while connected
// -------------------------------------------------------------------------------------------
function setLive(on, why) {
  const el = $("#live");
  el.className = "live " + (on ? "on" : "off");
  el.textContent = on ? "● live" : "○ not live";
  el.title = why;
}

async function startLive() {
  if (app.liveAbort) app.liveAbort.abort();
  app.liveAbort = new AbortController();
  const signal = app.liveAbort.signal;
  let after = null;
  while (!signal.aborted && app.token) {
    try {
      const url = "/v1/events/stream" + (after != null ? "?after=" + after : "");
      const r = await fetch(url, { headers: { Authorization: "Bearer " + app.token }, signal });
      if (r.status === 401 || r.status === 403) { setLive(false, "This token may not read the live stream"); return; }
      if (!r.ok) throw new Error(String(r.status));
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        setLive(true, "Live: the page updates as events are recorded");
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const lines = block.split("\n");
          const kind = (lines.find((l) => l.startsWith("event: ")) || "").slice(7);
          const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          const id = lines.find((l) => l.startsWith("id: "));
          if (id) after = Number(id.slice(4));
          if (kind === "end") { setLive(false, "The server ended the live stream: " + data); return; }
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    setLive(false, "Live updates are disconnected; reconnecting…");
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function onEvent(event) {
  clearTimeout(app.refreshTimer); // bursts: refresh the visible page at most every 500 ms
  app.refreshTimer = setTimeout(() => {
    const hash = location.hash || "#/board";
    if (hash.startsWith("#/board") || hash === "#/" || hash === "") loadBoard();
    else if (hash === "#/patient/" + encodeURIComponent(event.patient_id)) showPatient(event.patient_id);
  }, 500);
}

// -------------------------------------------------------------------------------------------
// Board: needs attention first; filters and sort in the URL; summary cards filter
// -------------------------------------------------------------------------------------------
const FLAGS = [
  ["overdue", "Overdue", "overdue"],
  ["toxicity", "Open toxicity", "open_toxicity"],
  ["hold", "Fractions held", "hold"],
  ["awaiting", "Awaiting response assessment", "awaiting_assessment"],
  ["sae", "SAE report due", "sae_report_due"],
];
const COLUMNS = [
  ["patient", "Patient"], ["site", "Site"], ["state", "State"], ["course", "Course"], ["next_action", "Next action"], ["due", "Due"],
  ["dose", "Dose delivered"], ["toxicity", "Open toxicity"], ["response", "Response"], ["last_event", "Last event"],
];

function boardParams() {
  const [, query] = (location.hash || "").split("?");
  return new URLSearchParams(query || "");
}
function setBoardParams(params, push) {
  const q = params.toString();
  const hash = "#/board" + (q ? "?" + q : "");
  if (location.hash === hash) return;
  if (push) history.pushState(null, "", hash); else history.replaceState(null, "", hash);
  routed = location.href; // this page shows it already
}
/** The server's query for the board's filters and order (the CSV export sends the same). */
function serverQuery(params) {
  const q = new URLSearchParams();
  if (params.get("state")) q.set("state", params.get("state"));
  if (params.get("site")) q.set("site", params.get("site"));
  for (const [flag] of FLAGS) if (params.get(flag)) q.set(flag, "true");
  if (params.get("q")) q.set("q", params.get("q"));
  q.set("sort", params.get("sort") || "attention");
  return q;
}

async function showBoard(params) {
  const view = $("#view");
  const states = app.labels ? Object.keys(app.labels.states) : [];
  view.innerHTML = `<h1>Board</h1>
    <section id="sites" class="sites" aria-labelledby="h-sites" hidden></section>
    <div class="cards" id="cards" role="group" aria-label="Needs action: click to filter"></div>
    <form class="filters" id="filters" role="search" aria-label="Filter the board">
      <label>Site <select id="f-site"><option value="">all sites</option></select></label>
      <label>State <select id="f-state"><option value="">all states</option>${states.map((s) => `<option value="${esc(s)}">${esc(L.state(s))}</option>`).join("")}</select></label>
      ${FLAGS.map(([f, label]) => `<label><input type="checkbox" id="f-${f}" data-flag="${f}"> ${esc(label)}</label>`).join("")}
      <label>Patient <input id="f-text" type="search" placeholder="P-00…" size="10"></label>
      <button type="button" id="f-reset" class="link">Clear filters</button>
      <button type="button" id="csv" class="secondary">Export CSV</button>
    </form>
    <p class="small" id="board-status" aria-live="polite"></p>
    <div class="table-wrap"><table id="board"><caption class="visually-hidden">Patients</caption>
      <colgroup>${COLUMNS.map(([key]) => `<col class="c-${key}">`).join("")}</colgroup>
      <thead><tr>${COLUMNS.map(([key, label]) => `<th scope="col" data-col="${key}"><button type="button" class="sort" data-sort="${key}">${esc(label)}<span class="arrow" aria-hidden="true"></span></button></th>`).join("")}</tr></thead>
      <tbody></tbody></table></div>
    <p class="small">${esc(timeZoneNote())} Doses count CAR-positive viable T cells; hover a dose for cells per kg.</p>`;
  const p = params || boardParams();
  $("#f-state").value = p.get("state") || "";
  siteOptions(p.get("site") || "");
  for (const [f] of FLAGS) $("#f-" + f).checked = !!p.get(f);
  $("#f-text").value = p.get("q") || "";
  const change = (push) => () => {
    const q = boardParams();
    const state = $("#f-state").value;
    state ? q.set("state", state) : q.delete("state");
    const site = $("#f-site").value;
    site ? q.set("site", site) : q.delete("site");
    for (const [f] of FLAGS) $("#f-" + f).checked ? q.set(f, "1") : q.delete(f);
    const text = $("#f-text").value.trim();
    text ? q.set("q", text) : q.delete("q");
    setBoardParams(q, push);
    loadBoard();
  };
  $("#f-state").onchange = change(true);
  $("#f-site").onchange = change(true);
  for (const [f] of FLAGS) $("#f-" + f).onchange = change(true);
  let typing = null;
  $("#f-text").oninput = () => { clearTimeout(typing); typing = setTimeout(change(false), 200); };
  $("#filters").onsubmit = (e) => e.preventDefault();
  $("#f-reset").onclick = () => { const q = boardParams(); const sort = q.get("sort"); setBoardParams(new URLSearchParams(sort ? { sort } : {}), true); showBoard(); };
  $("#csv").onclick = exportCsv;
  for (const b of view.querySelectorAll("button.sort")) b.onclick = () => sortBy(b.dataset.sort);
  focusMain("Board");
  await loadBoard();
}

function sortBy(key) {
  const q = boardParams();
  const now = q.get("sort") || "attention";
  q.set("sort", now === key ? "-" + key : key);
  setBoardParams(q, true);
  loadBoard();
}

function attentionBadges(r) {
  const out = [];
  if (r.overdue) out.push(`<span class="badge warn">${esc(plural(r.days_overdue, "day"))} overdue</span>`);
  if (r.hold) out.push(`<span class="badge bad">fractions held</span>`);
  if (String(r.next_action || "").startsWith("record_sae_report")) out.push(`<span class="badge bad">SAE report due</span>`);
  if (r.product_waiting_too_long) out.push(`<span class="badge warn">product waiting ${esc(plural(r.product_waiting_days, "day"))}</span>`);
  return out.join(" ");
}

/** The Site filter's options: the sites of /v1/counts/sites (a site-limited token: its own), and
 *  the one in the URL even when it is not among them. */
function siteOptions(chosen) {
  const select = $("#f-site");
  if (!select) return;
  const ids = Object.keys(app.sites || {});
  if (chosen && !ids.includes(chosen)) ids.push(chosen);
  select.innerHTML = `<option value="">all sites</option>` + ids.map((id) => {
    const name = app.sites && app.sites[id] && app.sites[id].name;
    return `<option value="${esc(id)}">${esc(id)}${name ? ` · ${esc(name)}` : ""}</option>`;
  }).join("");
  select.value = chosen;
}
function siteName(id) { return (app.sites && app.sites[id] && app.sites[id].name) || ""; }

/** The Sites panel: per site patients, overdue next actions, open data queries and their median
 *  age; a site's row filters the board by it. Shown when there is more than one site, or for a
 *  site-limited token (its sites). */
function sitesPanel(sites, chosen) {
  const box = $("#sites");
  if (!box) return;
  const ids = Object.keys(sites || {});
  if (!(ids.length > 1 || (app.me && app.me.sites && ids.length))) { box.hidden = true; box.innerHTML = ""; return; }
  const age = (d) => (d == null ? "–" : `${Math.round(Number(d) * 10) / 10}`);
  box.hidden = false;
  box.innerHTML = `<h2 id="h-sites">Sites</h2><div class="table-wrap"><table id="sites-table">
    <thead><tr><th scope="col">Site</th><th scope="col" class="num">Patients</th><th scope="col" class="num">Overdue actions</th><th scope="col" class="num">Open queries</th><th scope="col" class="num">Median query age (days)</th></tr></thead>
    <tbody>${ids.map((id) => {
      const s = sites[id];
      const on = id === chosen;
      return `<tr data-site="${esc(id)}" class="${on ? "chosen" : ""}${s.active === false ? " inactive" : ""}">
        <th scope="row"><button type="button" class="link site-filter" data-site="${esc(id)}" aria-pressed="${on}" title="${on ? "Show every site" : `Show only site ${esc(id)}`}">${esc(id)}</button> <span class="small">${esc(s.name || "")}${s.time_zone ? ` · ${esc(s.time_zone)}` : ""}${s.active === false ? " · inactive" : ""}</span></th>
        <td class="num">${esc(s.patients)}</td><td class="num">${s.overdue_actions ? `<span class="badge warn">${esc(s.overdue_actions)}</span>` : "0"}</td>
        <td class="num">${esc(s.open_queries)}</td><td class="num">${esc(age(s.median_query_age_days))}</td></tr>`;
    }).join("")}</tbody></table></div>`;
  const pick = (id) => {
    const q = boardParams();
    q.get("site") === id ? q.delete("site") : q.set("site", id);
    setBoardParams(q, true);
    siteOptions(q.get("site") || "");
    loadBoard();
  };
  for (const tr of box.querySelectorAll("tbody tr")) tr.onclick = (ev) => { ev.preventDefault(); pick(tr.dataset.site); };
}

async function loadBoard() {
  if (!$("#board")) return;
  const params = boardParams();
  const query = serverQuery(params);
  const site = params.get("site") || "";
  let rows, counts, sites;
  try {
    [rows, counts, sites] = await Promise.all([
      api("/v1/board?" + query),
      api("/v1/counts" + (site ? "?site=" + encodeURIComponent(site) : "")).catch(() => null),
      api("/v1/counts/sites").catch(() => null),
    ]);
  } catch (e) {
    if ($("#board-status")) $("#board-status").textContent = e.message;
    return;
  }
  if (!$("#board")) return;
  app.board = rows;
  if (sites) {
    const known = Object.keys(app.sites || {}).join();
    app.sites = sites;
    if (Object.keys(sites).join() !== known) siteOptions(site);
  }
  sitesPanel(sites, site);
  const sort = query.get("sort");
  for (const th of document.querySelectorAll("#board thead th")) {
    const key = th.dataset.col;
    const dir = sort === key ? "ascending" : sort === "-" + key ? "descending" : null;
    dir ? th.setAttribute("aria-sort", dir) : th.removeAttribute("aria-sort");
    $(".arrow", th).textContent = dir === "ascending" ? " ▲" : dir === "descending" ? " ▼" : "";
  }
  $("#board tbody").innerHTML = rows.map((r) => {
    const cls = [r.overdue ? "overdue" : "", r.open_toxicities > 0 ? "toxicity" : "", r.hold ? "hold" : ""].join(" ").trim();
    const tox = r.open_toxicities > 0
      ? `<span class="badge ${r.severe_open ? "bad" : "warn"}">grade ${esc(r.max_open_grade)}${r.open_toxicities > 1 ? ` · ${esc(plural(r.open_toxicities, "episode"))}` : ""}</span>` : "";
    const due = r.due_on ? fmtDay(r.due_on) : "–";
    return `<tr class="${cls}" data-patient="${esc(r.patient_id)}">
      <th scope="row"><a href="#/patient/${encodeURIComponent(r.patient_id)}">${esc(r.patient_id)}</a></th>
      <td class="nowrap" data-site="${esc(r.site)}"${siteName(r.site) ? ` title="${esc(siteName(r.site))}"` : ""}>${esc(r.site || "–")}</td>
      <td data-state="${esc(r.state)}">${esc(r.state_label || L.state(r.state))}</td><td>${r.course_number ? esc(r.course_number) : "–"}</td>
      <td>${esc(humanDates(r.next_action_label || "–"))} ${attentionBadges(r)}</td><td class="nowrap">${due}</td>
      <td class="nowrap">${dose(r.delivered_cells, r.planned_cells, r.delivered_cells_per_kg)}</td><td>${tox}</td>
      <td>${r.response ? `<abbr title="${esc(L.response(r.response))}">${esc(r.response)}</abbr>` : "–"}</td>
      <td class="small nowrap">${esc(fmtTime(r.last_occurred_at))}</td></tr>`;
  }).join("");
  const filtered = params.get("state") || params.get("site") || FLAGS.some(([f]) => params.get(f)) || params.get("q");
  const total = counts ? Object.values(counts.state || {}).reduce((a, b) => a + b, 0) : null;
  const order = sort === "attention" ? "needs attention first" : `by ${COLUMNS.find(([k]) => k === sort.replace("-", ""))[1].toLowerCase()}${sort.startsWith("-") ? ", descending" : ""}`;
  if (!performance.getEntriesByName("board-interactive").length) performance.mark("board-interactive"); // the board is drawn and its controls work
  const other = params.get("state") || FLAGS.some(([f]) => params.get(f)) || params.get("q");
  const where = site ? ` at site ${site}` : "";
  const shown = site && !other ? `${plural(rows.length, "patient")}${where}` : filtered && total != null ? `${plural(rows.length, "patient")} of ${total}${where} shown` : plural(rows.length, "patient");
  $("#board-status").textContent = shown + ` · sorted ${order}`;
  if (counts && counts.attention) {
    const a = counts.attention;
    // the SAE card only when a report is due (or its filter is on)
    const cards = FLAGS.map(([f, label, key]) => [f, label, a[key]]).filter(([f, , n]) => f !== "sae" || n || params.get(f));
    $("#cards").innerHTML = cards.map(([f, label, n]) => `<button type="button" class="card${n ? " active-count" : ""}${f === "sae" ? " bad" : ""}" data-flag="${f}" aria-pressed="${params.get(f) ? "true" : "false"}"><b>${n}</b>${esc(label)}</button>`).join("");
    for (const b of document.querySelectorAll("#cards button")) b.onclick = () => {
      const q = boardParams();
      q.get(b.dataset.flag) ? q.delete(b.dataset.flag) : q.set(b.dataset.flag, "1");
      setBoardParams(q, true);
      $("#f-" + b.dataset.flag).checked = !!q.get(b.dataset.flag);
      loadBoard();
    };
  }
}

async function exportCsv() {
  const query = serverQuery(boardParams());
  try {
    const text = await api("/v1/board.csv?" + query);
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url; a.download = "board.csv"; document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) { $("#board-status").textContent = e.message; }
}

// -------------------------------------------------------------------------------------------
// Patient: clinical summary first, toxicity timeline, state diagram, event timeline
// -------------------------------------------------------------------------------------------
async function showPatient(pid) {
  const view = $("#view");
  const enc = encodeURIComponent(pid);
  view.innerHTML = `<p><a href="#/board">← Board</a></p><h1>Patient ${esc(pid)}</h1><div id="p-body">Loading…</div>`;
  let summary, history, protocol, boardRow;
  try {
    [summary, history, protocol, boardRow] = await Promise.all([
      api(`/v1/patients/${enc}`),
      api(`/v1/patients/${enc}/history`),
      api("/v1/protocol"),
      api(`/v1/board?q=${enc}`).then((rows) => rows.find((r) => r.patient_id === pid) || null).catch(() => null),
    ]);
  } catch (e) {
    $("#p-body").innerHTML = `<p class="error" role="alert">${esc(e.status === 404 ? `There is no patient ${pid}.` : e.message)}</p>`; return;
  }
  const moves = history.filter((e) => e.to_state && e.from_state && e.to_state !== e.from_state);
  const links = [app.me.may_audit ? `<a id="report-link" href="#/report/${enc}">Audit report</a>` : "", `<button type="button" id="p-print" class="link no-print">Print</button>`].filter(Boolean);
  $("#p-body").innerHTML = `
    <p class="lede"><span class="badge state" id="p-state" data-state="${esc(summary.state)}">${esc(L.state(summary.state))}</span>
      ${summary.course_number ? `course ${esc(summary.course_number)}` : "no course yet"} · protocol ${esc(summary.protocol_version || "–")} · ${esc(plural(summary.version, "recorded event"))}
      ${links.length ? " · " + links.join(" · ") : ""}</p>
    <section class="panel" aria-labelledby="h-summary"><h2 id="h-summary">Clinical summary</h2>
      ${dueSection(summary, boardRow)}
      ${eligibilitySection(history)}
      ${coursesSection(summary, history)}
      ${toxicitySection(summary, history)}
      ${responseSection(summary)}
      ${followUpSection(summary)}
      ${saeSection(summary)}
    </section>
    <section class="panel" aria-labelledby="h-tox" hidden><h2 id="h-tox">Toxicity timeline</h2><div id="toxicity-timeline"></div></section>
    <section class="panel" aria-labelledby="h-diagram"><h2 id="h-diagram">Path through the protocol</h2>
      <p class="small" id="path">${esc(["candidate", ...moves.map((m) => m.to_state)].map(L.state).join(" → "))}</p>
      <div id="diagram" class="diagram"></div></section>
    <section class="panel" id="queries" aria-label="Data queries"></section>
    <section class="panel" aria-labelledby="h-timeline"><h2 id="h-timeline">What happened</h2>
      <div class="table-wrap"><table id="timeline"><thead><tr><th scope="col">When (clinical)</th><th scope="col">What</th><th scope="col">Details</th><th scope="col">Who</th><th scope="col">Recorded</th></tr></thead><tbody>
      ${history.map(timelineRow).join("")}</tbody></table></div>
      <p class="small">${esc(timeZoneNote())}</p></section>`;
  $("#p-print").onclick = () => window.print();
  focusMain("Patient " + pid);
  toxicityFigure(pid);
  drawDiagram(protocol, moves, summary.state);
  mountQueries(pid);
}

/** Why the next action is due when it is, from the record (the protocol's schedule). */
function dueWhy(s, row) {
  const code = String(row.next_action || "").split(/[ :(]/)[0];
  const c = s.current_course;
  const days = (a, b) => Math.round((Date.parse(b) - Date.parse(a)) / 864e5);
  if (code === "assess_response" && c && c.started_on && row.due_on) {
    return `the response is assessed ${plural(days(c.started_on, row.due_on), "day")} after D1 (${fmtDay(c.started_on)})${c.cancelled ? "; the remaining fractions were cancelled" : ""}`;
  }
  if (/^infuse_d[23]$/.test(code) && c && c.fractions.length && row.due_on) {
    const last = c.fractions[c.fractions.length - 1];
    return `D${last.day + 1} follows D${last.day} (${fmtDay(last.given_on)}) after ${plural(days(last.given_on, row.due_on), "day")}`;
  }
  if (code === "decide" && c && c.assessed_on && row.due_on) {
    return `the decision after the response assessment (${fmtDay(c.assessed_on)}) is due within ${plural(days(c.assessed_on, row.due_on), "day")}`;
  }
  if (code === "record_follow_up") return "the next visit of the follow-up schedule, due by the end of its window";
  if (code === "record_sae_report") return "a serious adverse event's reporting clock";
  if (code === "resolve_toxicity") return "an open toxicity holds the remaining fractions";
  return "";
}

function dueSection(s, row) {
  const items = [];
  if (row && row.next_action) {
    const due = row.due_on ? ` by ${fmtDay(row.due_on)}` : "";
    const late = row.overdue ? ` <span class="badge warn">${esc(plural(row.days_overdue, "day"))} overdue</span>` : "";
    const why = dueWhy(s, row);
    items.push(`<li><b>${esc(humanDates(row.next_action_label))}</b>${esc(due)}${late}${why ? `<br><span class="small">Why: ${esc(why)}.</span>` : ""}</li>`);
  } else if (s.ended) {
    items.push(`<li>Nothing due: ${esc(L.state(s.ended.state))} on ${esc(fmtTime(s.ended.occurred_at))}${s.ended.reason ? ` (${esc(s.ended.reason)})` : ""}.</li>`);
  }
  for (const t of s.open_toxicities) {
    items.push(`<li><span class="badge ${t.severe ? "bad" : "warn"}">open</span> ${esc(L.toxicity(t.kind))}${t.term && t.kind === "other" ? ` (${esc(t.term)})` : ""} grade ${esc(t.grade)} since ${esc(fmtTime(t.onset))}${t.opens_hold && s.state.startsWith("infused") ? ": fractions are held until it resolves" : ""}</li>`);
  }
  return `<h3>Due now</h3><ul id="due">${items.join("") || "<li>Nothing due.</li>"}</ul>`;
}

function eligibilitySection(history) {
  const screens = history.filter((e) => e.trigger === "screen" || e.trigger === "rescreen");
  if (!screens.length) return `<h3>Eligibility</h3><p id="eligibility">Not screened yet.</p>`;
  const last = screens[screens.length - 1];
  const o = last.outcome || {};
  const data = (last.facts && last.facts.screening) || (last.payload && last.payload.screening) || {};
  const when = `screened ${fmtDay((last.facts && last.facts.screening_date) || last.occurred_at)}`;
  const count = app.labels ? Object.keys(app.labels.criteria).length : null;
  if (o.eligible) {
    return `<h3>Eligibility</h3><p id="eligibility"><span class="badge ok">eligible</span> All ${count ?? ""} inclusion and exclusion criteria met (${esc(when)}${screens.length > 1 ? `, after ${esc(plural(screens.length - 1, "earlier screening"))}` : ""}).</p>`;
  }
  const failed = (o.failed_criteria || []).map((id) => {
    const c = app.labels && app.labels.criteria[id];
    const recorded = c ? c.inputs.filter((k) => k in data).map((k) => `${words(k).toLowerCase()} ${valueText(data[k])}`).join("; ") : "";
    return `<li>${c ? `${esc(c.kind === "exclusion" ? "Exclusion applies" : "Inclusion not met")}: ${esc(c.text)}` : esc(id)}${recorded ? ` <span class="small">(recorded: ${esc(recorded)})</span>` : ""}</li>`;
  });
  return `<h3>Eligibility</h3><p id="eligibility"><span class="badge bad">not eligible</span> ${esc(when)}; failed ${esc(plural(failed.length, "criterion", "criteria"))}:</p><ul id="failed-criteria">${failed.join("")}</ul>`;
}

function coursesSection(s, history) {
  if (!s.courses.length) return "";
  const infusions = history.filter((e) => /^infuse_d\d$/.test(e.trigger || "") && e.type !== "FactCorrected");
  return s.courses.map((c) => {
    const perKg = c.weight_kg ? (n) => sci(n / c.weight_kg) : () => "–";
    const rows = c.fractions.map((f) => {
      const ev = infusions.find((e) => e.facts && e.facts.course_number === c.number && e.facts.day === f.day);
      const lot = ev ? [ev.payload.product_lot || ev.facts.product_lot, ev.payload.bag_id].filter(Boolean).join(" / ") : "";
      return `<tr><th scope="row">D${f.day}</th><td>${esc(fmtDay(f.given_on))}</td><td>${esc(sci(f.delivered_cells))}</td><td>${esc(perKg(f.delivered_cells))}</td>
        <td>${esc(pct(f.delivered_cells, f.planned_cells) ?? "–")} %</td><td>${esc(lot || "–")}</td><td>${f.deviations.length ? f.deviations.map((d) => `<span class="badge warn">deviation</span> ${esc(d)}`).join("<br>") : "–"}</td></tr>`;
    });
    for (let day = c.fractions.length + 1; day <= c.fraction_plan.length; day++) {
      const why = c.cancelled ? `not given: ${c.cancel_reason || "remaining fractions cancelled"}` : "not given yet";
      rows.push(`<tr class="muted"><th scope="row">D${day}</th><td colspan="6">${esc(why)} (plan ${esc(sci(c.fraction_plan[day - 1]))} cells)</td></tr>`);
    }
    const response = c.response ? ` · response: <abbr title="${esc(L.response(c.response))}">${esc(c.response)}</abbr>` : "";
    const decision = response + (c.decision ? ` · decision: ${esc(L.state(c.decision) || c.decision)}` : "");
    return `<h3>Course ${esc(c.number)}</h3>
      <p>Weight ${esc(c.weight_kg)} kg · plan ${esc(sci(c.planned_total_cells))} cells (${esc(sci(c.planned_total_cells / c.weight_kg))} cells/kg) · delivered ${dose(c.delivered_cells, c.planned_total_cells, c.delivered_cells / c.weight_kg)}${decision}</p>
      <div class="table-wrap"><table class="fractions"><thead><tr><th scope="col">Day</th><th scope="col">Date</th><th scope="col">Cells</th><th scope="col">Cells/kg</th><th scope="col">% of plan</th><th scope="col">Lot / bag</th><th scope="col">Deviations</th></tr></thead>
      <tbody>${rows.join("")}</tbody></table></div>`;
  }).join("");
}

/** Each toxicity episode with its grades over time (from the history: reports and resolution). */
function episodes(history) {
  const out = {};
  for (const e of history) {
    if (e.trigger === "report_toxicity" && e.type !== "FactCorrected" && e.outcome && e.outcome.toxicity_id) {
      const id = e.outcome.toxicity_id;
      (out[id] = out[id] || { id, kind: e.outcome.kind, term: e.outcome.term, steps: [] }).steps.push({ at: e.occurred_at, grade: e.outcome.grade, why: (e.outcome.reasons || [])[0] });
    } else if (e.trigger === "resolve_toxicity" && e.payload && out[e.payload.toxicity_id]) {
      out[e.payload.toxicity_id].steps.push({ at: e.occurred_at, resolved: true });
    }
  }
  return out;
}

function toxicitySection(s, history) {
  if (!s.toxicities.length) return `<h3>Toxicity</h3><p>No toxicity reported.</p>`;
  const eps = episodes(history);
  const rows = s.toxicities.map((t) => {
    const steps = (eps[t.id] ? eps[t.id].steps : []).map((st) => st.resolved ? `resolved ${fmtTime(st.at)}` : `grade ${st.grade} ${fmtTime(st.at)}`).join(" → ");
    return `<tr class="${t.open ? "open" : ""}"><th scope="row">${esc(L.toxicity(t.kind))}${t.kind === "other" && t.term ? ` (${esc(t.term)})` : ""}</th>
      <td>${esc(t.grade)}${t.worst_grade !== t.grade ? ` (worst ${esc(t.worst_grade)})` : ""}${t.severe ? ' <span class="badge bad">severe</span>' : ""}</td>
      <td>${esc(steps || fmtTime(t.onset))}</td><td>${t.open ? '<span class="badge warn">open</span>' : "resolved"}</td><td class="small">${esc(t.scale)} ${esc(t.scale_version)}, course ${esc(t.course_number ?? "–")}</td></tr>`;
  });
  return `<h3>Toxicity</h3><div class="table-wrap"><table id="toxicities"><thead><tr><th scope="col">Episode</th><th scope="col">Grade</th><th scope="col">Grades over time</th><th scope="col">Status</th><th scope="col">Scale</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function responseSection(s) {
  const assessed = s.courses.filter((c) => c.response || c.assessed_on);
  if (!assessed.length) return "";
  return `<h3>Response</h3><ul id="responses">${assessed.map((c) => `<li>Course ${esc(c.number)}: <b>${esc(L.response(c.response))}</b>${c.computed_response && c.computed_response !== c.response ? ` (computed ${esc(c.computed_response)})` : ""}${c.mrd_status ? `, MRD ${esc(c.mrd_status)}` : ""}, assessed ${esc(fmtDay(c.assessed_on))}</li>`).join("")}</ul>`;
}

function followUpSection(s) {
  const visits = s.follow_up ? Object.values(s.follow_up.visits || {}) : [];
  if (!visits.length) return "";
  return `<h3>Follow-up visits</h3><div class="table-wrap"><table id="follow-up"><thead><tr><th scope="col">Visit</th><th scope="col">Date</th><th scope="col">Window</th><th scope="col">Findings</th></tr></thead><tbody>
    ${visits.map((v) => `<tr><th scope="row">${esc(v.visit)}</th><td>${esc(fmtTime(v.occurred_at))}</td><td>${esc(fmtDay(v.window_start))} – ${esc(fmtDay(v.window_end))}${v.in_window ? "" : ' <span class="badge warn">outside</span>'}</td>
      <td>${facts({ disease_status: v.disease_status && v.disease_status.status, b_cell_aplasia: v.b_cell_aplasia, new_malignancy: v.new_malignancy })}</td></tr>`).join("")}
    </tbody></table></div>${s.follow_up.lost ? '<p><span class="badge bad">lost to follow-up</span></p>' : ""}`;
}

function saeSection(s) {
  if (!s.sae_cases || !s.sae_cases.length) return "";
  return `<h3>Serious adverse event reports</h3><ul id="sae">${s.sae_cases.map((c) => `<li>Case ${esc(c.id)} (${esc(valueText(c.seriousness))}${c.susar ? ", SUSAR" : ""}): ${c.clocks.map((k) => `${esc(k.report)} report ${k.sent_at ? `sent ${esc(fmtTime(k.sent_at))}${k.late ? ' <span class="badge bad">late</span>' : ""}` : `<b>due ${esc(fmtTime(k.due_at))}</b>`}`).join("; ")}</li>`).join("")}</ul>`;
}

/** One event of the history in words. */
function timelineRow(e) {
  let what, details = "";
  const o = e.outcome || {}, p = e.payload || {};
  if (e.type === "Registered") what = L.done("register");
  else if (e.type === "FactCorrected") {
    what = L.done("correct");
    details = `corrects event ${esc(e.corrects)} (${esc(L.done(e.trigger))}): ${facts(e.changes)}`;
  } else if (/^Query(Opened|Answered|Closed|Reopened)$/.test(e.type || "")) {
    // a step of a data query (issue 17): the query, what it is about, its text
    what = L.done(e.command);
    const about = e.on_version ? ` on event ${esc(e.on_version)}${e.field ? ` <code>${esc(e.field)}</code>` : ""}` : "";
    const by = e.rule ? ` <span class="small">(query rule ${esc(e.rule)})</span>` : "";
    const fix = e.correction ? `; see correction, event ${esc(e.correction)}` : "";
    details = `query ${esc(e.query_id)}${about}${e.text ? `: ${esc(e.text)}` : ""}${fix}${by}`;
  } else if (e.type === "MilestoneSigned") {
    what = L.done("sign");
    details = `${esc(words(e.milestone || ""))} (${esc(e.meaning || "")})${e.printed_name ? ` by ${esc(e.printed_name)}` : ""}`;
  } else {
    what = L.done(e.trigger);
    const t = e.trigger || "";
    if (t === "screen" || t === "rescreen") {
      details = o.eligible ? "eligible: every criterion met" : `not eligible: ${esc((o.failed_criteria || []).map((id) => (app.labels && app.labels.criteria[id] ? app.labels.criteria[id].text : id)).join("; "))}`;
    } else if (/^infuse_d\d$/.test(t)) {
      details = `${dose(o.cells, o.planned_cells, e.facts && e.facts.weight_kg ? o.cells / e.facts.weight_kg : null)}${p.product_lot ? `, lot ${esc(p.product_lot)}` : ""}${p.bag_id ? `, bag ${esc(p.bag_id)}` : ""}${(o.deviations || []).length ? ` <span class="badge warn">deviation</span> ${esc(o.deviations.join("; "))}` : ""}`;
    } else if (t === "report_toxicity") {
      details = `${esc(L.toxicity(o.kind))}${o.kind === "other" && o.term ? ` (${esc(o.term)})` : ""} grade ${esc(o.grade)}${o.severe ? ' <span class="badge bad">severe</span>' : ""}${o.opens_hold ? ", holds further fractions" : ""}. ${esc((o.reasons || []).join("; "))}`;
    } else if (t === "resolve_toxicity") {
      details = `episode ${esc(p.toxicity_id)}`;
    } else if (t === "assess_response") {
      details = `${esc(L.response(o.response || o.computed_response))}${o.mrd_status ? `, MRD ${esc(o.mrd_status)}` : ""}. ${esc((o.reasons || [])[0] || "")}`;
    } else if (t === "record_follow_up") {
      details = `${esc(p.visit)}: ${facts(p, ["visit"])}`;
    } else if (t === "record_sae_report") {
      details = `${esc(p.report)} report on case ${esc(p.case_id)} to ${esc(p.sent_to)}${o.due_at ? ` (due ${esc(fmtTime(o.due_at))})` : ""}`;
    } else {
      details = facts(p);
    }
  }
  const move = e.from_state && e.to_state && e.from_state !== e.to_state ? `<br><span class="small">${esc(L.state(e.from_state))} → ${esc(L.state(e.to_state))}</span>` : "";
  const reason = e.reason ? `<br><span class="reason">Reason: ${esc(e.reason)}</span>` : "";
  return `<tr data-version="${esc(e.version)}"><td>${esc(fmtTime(e.occurred_at || e.recorded_at))}</td><td>${esc(what)}${move}</td><td>${details}${reason}</td>
    <td>${esc(e.actor || "")} <span class="small">${esc(e.role || "")}</span></td><td class="small">${esc(fmtTime(e.recorded_at))}</td></tr>`;
}

/** The toxicity timeline figure, drawn by the server (another route); none when it is absent. */
async function toxicityFigure(pid) {
  const box = $("#toxicity-timeline");
  try {
    const r = await fetch(`/v1/patients/${encodeURIComponent(pid)}/figures/toxicity.svg`, { headers: { Authorization: "Bearer " + app.token } });
    if (!r.ok) { box.closest("section").hidden = true; return; }
    const doc = new DOMParser().parseFromString(await r.text(), "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") { box.closest("section").hidden = true; return; }
    for (const s of svg.querySelectorAll("script")) s.remove();
    box.replaceChildren(document.importNode(svg, true));
    box.closest("section").hidden = false;
  } catch (e) { box.closest("section").hidden = true; }
}

function mountQueries(pid) {
  const box = $("#queries");
  if (!window.cartQueries) { box.hidden = true; return; }
  box.hidden = false;
  try { window.cartQueries.mount(box, { patientId: pid, role: app.me.role, api, formatTime: fmtTime }); } catch (e) { box.textContent = ""; box.hidden = true; }
}

// Other engineers' panels: loaded once when present (a 404 is fine).
function loadOptional(src) {
  const s = document.createElement("script");
  s.src = src; s.async = true; s.onerror = () => s.remove();
  s.onload = () => { const m = /^#\/patient\/([^?]+)/.exec(location.hash); if (m && $("#queries")) mountQueries(decodeURIComponent(m[1])); };
  document.head.append(s);
}

// -------------------------------------------------------------------------------------------
// State diagram: dagre lays it out; only this patient's path is strong
// -------------------------------------------------------------------------------------------
let dagreLoading = null;
function loadDagre() {
  if (window.dagre) return Promise.resolve(window.dagre);
  dagreLoading = dagreLoading || new Promise((res, rej) => {
    const s = document.createElement("script");
    s.src = DAGRE; s.onload = () => res(window.dagre); s.onerror = () => rej(new Error("layout library missing"));
    document.head.append(s);
  });
  return dagreLoading;
}

async function drawDiagram(protocol, moves, current) {
  const box = $("#diagram");
  let dagre;
  try { dagre = await loadDagre(); } catch (e) { box.textContent = "The diagram's layout library could not be loaded."; return; }
  const g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({ rankdir: "TB", nodesep: 22, ranksep: 30, edgesep: 8, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const W = 150, H = 38;
  for (const s of protocol.states) g.setNode(s, { width: W, height: H });
  const taken = new Set(moves.map((m) => m.from_state + ">" + m.to_state));
  const visited = new Set(["candidate", ...moves.map((m) => m.to_state)]);
  // States every other state may move to (withdrawal, death): their edges would cross the whole
  // diagram, so they are drawn only where this patient took them, and the legend says so.
  const sources = {};
  for (const t of protocol.transitions) if (t.source !== t.dest) (sources[t.dest] = sources[t.dest] || new Set()).add(t.source);
  const open = protocol.states.filter((s) => !protocol.terminal.includes(s)).length;
  const anywhere = Object.keys(sources).filter((d) => sources[d].size >= open - 2);
  const triggers = {};
  for (const t of protocol.transitions) {
    if (t.source === t.dest) continue;
    if (anywhere.includes(t.dest) && !taken.has(t.source + ">" + t.dest)) continue;
    const key = t.source + ">" + t.dest;
    (triggers[key] = triggers[key] || []).push(t.trigger);
    if (!g.hasEdge(t.source, t.dest)) g.setEdge(t.source, t.dest, { weight: taken.has(key) ? 4 : 1 });
  }
  // the states reachable from anywhere sit below the course's ends (an edge that is not drawn)
  const ends = protocol.terminal.filter((s) => !anywhere.includes(s));
  for (const d of anywhere) if (!g.inEdges(d).length) for (const e of ends) g.setEdge(e, d, { hidden: true, weight: 0 });
  dagre.layout(g);
  const size = g.graph();
  const path = (pts) => {
    let d = `M${pts[0].x},${pts[0].y}`;
    for (let i = 1; i < pts.length - 1; i++) { const a = pts[i], b = pts[i + 1]; d += ` Q${a.x},${a.y} ${(a.x + b.x) / 2},${(a.y + b.y) / 2}`; }
    const last = pts[pts.length - 1];
    return d + ` L${last.x},${last.y}`;
  };
  let faint = "", strong = "";
  for (const e of g.edges()) {
    if (g.edge(e).hidden) continue;
    const key = e.v + ">" + e.w;
    const isTaken = taken.has(key);
    const svg = `<path class="edge${isTaken ? " taken" : ""}" data-edge="${esc(key)}" d="${path(g.edge(e).points)}" marker-end="url(#${isTaken ? "arrow-strong" : "arrow"})"><title>${esc(triggers[key].map(L.action).join(" / "))}</title></path>`;
    if (isTaken) strong += svg; else faint += svg;
  }
  const nodes = protocol.states.map((s) => {
    const n = g.node(s);
    const cls = "node" + (visited.has(s) ? " visited" : "") + (s === current ? " current" : "");
    const label = L.state(s);
    const lines = label.length > 20 && label.includes(" (") ? [label.slice(0, label.indexOf(" (")), label.slice(label.indexOf(" (") + 1)] : [label];
    const text = lines.map((line, i) => `<tspan x="${n.x}" dy="${i ? 13 : lines.length > 1 ? -2 : 4}">${esc(line)}</tspan>`).join("");
    return `<g class="${cls}" data-state="${esc(s)}"><rect x="${n.x - W / 2}" y="${n.y - H / 2}" width="${W}" height="${H}" rx="6"></rect><text x="${n.x}" y="${n.y}" text-anchor="middle">${text}</text></g>`;
  }).join("");
  box.innerHTML = `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.ceil(size.width)}" height="${Math.ceil(size.height)}" viewBox="0 0 ${Math.ceil(size.width)} ${Math.ceil(size.height)}" role="img" aria-labelledby="diagram-title">
    <title id="diagram-title">State diagram of the protocol; this patient's path drawn strong, now: ${esc(L.state(current))}</title>
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#b4bcc6"></path></marker>
    <marker id="arrow-strong" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#174ea6"></path></marker></defs>
    ${faint}${strong}${nodes}</svg>
    <p class="small legend"><span class="key strong"></span> this patient's path <span class="key faint"></span> other moves the protocol allows <span class="key now"></span> now${anywhere.length ? ` · ${esc(anywhere.map(L.state).join(" and "))}: reachable from any state (drawn only when taken)` : ""}</p>`;
}

// -------------------------------------------------------------------------------------------
// Audit report: a page of its own, readable and printable (auditors)
// -------------------------------------------------------------------------------------------
async function showReport(pid) {
  const view = $("#view");
  const enc = encodeURIComponent(pid);
  view.innerHTML = `<p class="no-print"><a href="#/patient/${enc}">← Patient ${esc(pid)}</a> <button type="button" id="print" class="secondary">Print</button></p><article id="report" class="report">Loading…</article>`;
  $("#print").onclick = () => window.print();
  if (!app.me.may_audit) {
    $("#report").innerHTML = `<h1>Audit report ${esc(pid)}</h1><p class="error" role="alert">The audit report is for auditor tokens; this token's role is ${esc(app.me.role)}.</p>`;
    return focusMain("Audit report " + pid);
  }
  try {
    const html = await api(`/v1/patients/${enc}/report.html`);
    const doc = new DOMParser().parseFromString(html, "text/html");
    for (const s of doc.querySelectorAll("style, script")) s.remove();
    $("#report").replaceChildren(...[...doc.body.childNodes].map((n) => document.importNode(n, true)));
  } catch (e) {
    $("#report").innerHTML = `<h1>Audit report ${esc(pid)}</h1><p class="error" role="alert">${esc(e.message)}</p>`;
  }
  focusMain("Audit report " + pid);
}

loadOptional("/static/queries.js");
if (app.token) start(); else logout("");
