// The Cohort page: the cohort's figures (SVG drawn by the server) with the board's filters.
// Plain JS, nothing external. The token is the dashboard's (sessionStorage, sent as a bearer
// token); the figures are fetched with it and inlined: each SVG names itself (<title>, <desc>)
// and carries no script or style, so the page's Content-Security-Policy keeps it.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const KEY = "cart-course-token";
  let token = sessionStorage.getItem(KEY);
  const params = new URLSearchParams(location.search);
  const state = {
    state: params.get("state") || "",
    toxicity: params.get("toxicity") === "true",
    sort: params.get("sort") || "time_on_study",
    limit: params.has("limit") ? params.get("limit") : "50",
    offset: Number(params.get("offset") || 0),
  };

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
    if (r.status === 401) { logout("Your token was not accepted (unknown or revoked)."); throw Object.assign(new Error("401"), { status: 401 }); }
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
      throw Object.assign(new Error(r.status + ": " + detail), { status: r.status, detail });
    }
    return (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    token = null;
    $("#login").hidden = false; $("#cohort").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
    $("#login-error").textContent = message || "";
  }

  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem(KEY, token);
    start();
  });
  $("#logout").addEventListener("click", () => logout(""));

  function query(extra) {
    const q = new URLSearchParams();
    if (state.state) q.set("state", state.state);
    if (state.toxicity) q.set("toxicity", "true");
    for (const [k, v] of Object.entries(extra || {})) if (v !== "" && v != null) q.set(k, v);
    const text = q.toString();
    return text ? "?" + text : "";
  }

  function remember() {
    const q = new URLSearchParams(query({ sort: state.sort, limit: state.limit === "50" ? "" : state.limit, offset: state.offset || "" }).slice(1));
    history.replaceState(null, "", "/cohort" + (q.toString() ? "?" + q : ""));
  }

  async function figure(name, path) {
    const box = $("#" + name + "-box");
    box.setAttribute("aria-busy", "true");
    try {
      box.innerHTML = await api(path);
    } catch (e) {
      if (e.status === 401) return;
      if (e.status === 403) { refused = e; box.innerHTML = ""; return; }
      box.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    } finally {
      box.setAttribute("aria-busy", "false");
    }
  }

  async function swimmer() {
    const limit = state.limit;
    await figure("fig-swimmer", "/v1/cohort/figures/swimmer.svg" + query({ sort: state.sort, limit, offset: state.offset || "" }));
    // "patients 51-100 of 240" from the figure's own description: the pager follows it
    const desc = $("#fig-swimmer-box desc");
    const m = desc ? /of (\d+)/.exec(desc.textContent) : null;
    const total = m ? Number(m[1]) : null;
    const pager = $("#c-pager");
    pager.hidden = !(limit && total && total > Number(limit));
    if (!pager.hidden) {
      const first = state.offset + 1, last = Math.min(state.offset + Number(limit), total);
      $("#c-page").textContent = `patients ${first}–${last} of ${total}`;
      $("#c-prev").disabled = state.offset === 0;
      $("#c-next").disabled = last >= total;
    }
  }

  let refused = null;

  function showRefused(e) {
    // one message for the page, not one per figure: the token's role may not read the figures
    for (const box of document.querySelectorAll(".fig, .fig-row, #c-pager")) box.hidden = true;
    $("#c-refused").hidden = false;
    $("#c-refused").innerHTML = `<h2>This token cannot read the cohort figures</h2>
      <p>The cohort figures and the report are for <b>clinician</b>, <b>monitor</b> and <b>auditor</b> tokens.
      Log out and log in with one of those.</p><p class="small">The server said: ${esc(e.detail || e.message)}</p>`;
  }

  async function load() {
    remember();
    refused = null;
    $("#c-status").textContent = "drawing…";
    const q = query();
    await Promise.all([
      swimmer(),
      figure("fig-best-response", "/v1/cohort/figures/best-response.svg" + q),
      figure("fig-max-grade", "/v1/cohort/figures/max-grade.svg" + q),
      figure("fig-vein-to-vein", "/v1/cohort/figures/vein-to-vein.svg" + q),
    ]);
    $("#c-status").textContent = "";
    if (refused) showRefused(refused);
  }

  async function openReport() {
    // the report needs the token too: fetched, then shown as a page of its own (printable)
    $("#c-status").textContent = "preparing the report…";
    try {
      const html = await api("/v1/cohort/report.html" + query({ sort: state.sort }));
      const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      const tab = window.open(url, "_blank");
      if (!tab) location.href = url;
      $("#c-status").textContent = "";
    } catch (e) {
      $("#c-status").textContent = e.message;
    }
  }

  async function start() {
    $("#login").hidden = true; $("#cohort").hidden = false; $("#logout").hidden = false;
    $("#who").textContent = "logged in";
    for (const box of document.querySelectorAll(".fig, .fig-row")) box.hidden = false;
    $("#c-refused").hidden = true;
    let protocol;
    try { protocol = await api("/v1/protocol"); } catch (e) { protocol = { states: [] }; }
    if (!token) return; // the token was refused (401): back at the login form
    const sel = $("#c-state");
    sel.innerHTML = '<option value="">all</option>' + protocol.states.map((s) => `<option>${esc(s)}</option>`).join("");
    sel.value = state.state;
    $("#c-toxicity").checked = state.toxicity;
    $("#c-sort").value = state.sort;
    $("#c-limit").value = state.limit;
    sel.onchange = () => { state.state = sel.value; state.offset = 0; load(); };
    $("#c-toxicity").onchange = (e) => { state.toxicity = e.target.checked; state.offset = 0; load(); };
    $("#c-sort").onchange = (e) => { state.sort = e.target.value; state.offset = 0; swimmer().then(remember); };
    $("#c-limit").onchange = (e) => { state.limit = e.target.value; state.offset = 0; swimmer().then(remember); };
    $("#c-prev").onclick = () => { state.offset = Math.max(0, state.offset - Number(state.limit)); swimmer().then(remember); };
    $("#c-next").onclick = () => { state.offset += Number(state.limit); swimmer().then(remember); };
    $("#c-report").onclick = openReport;
    await load();
  }

  if (token) start(); else logout("");
})();
