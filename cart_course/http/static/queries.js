// The data-query panel of a patient (issue 17): self-contained, no dependencies.
//   window.cartQueries.mount(element, { patientId, role, api, formatTime })
// lists the patient's queries (GET /v1/patients/{id}/queries) and lets a monitor or data manager
// open, close and re-open them and the site (clinician) answer them, each step a command of the
// contract (POST /v1/patients/{id}/commands/{open_query|answer_query|close_query|reopen_query}).
// `api(path, opts)` is the dashboard's authenticated fetch (it throws an Error with .status and
// .detail on a refusal); `role` may be left out: the panel asks GET /v1/whoami; `formatTime(iso)`
// writes a time as the rest of the page does (default: as recorded).
// Each form keeps one Idempotency-Key until the server refuses what it sent (a double click or a
// retry after a lost answer records the step once), and is disabled while its step is sent.
"use strict";
(function () {
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const MONITORS = ["monitor", "data_manager"];
  const SITE = ["clinician"];
  const STATUS_BADGE = { open: "orange", reopened: "orange", answered: "", closed: "green" };

  function key() {
    if (window.crypto && crypto.randomUUID) return "dash-" + crypto.randomUUID();
    return "dash-" + Date.now() + "-" + Math.random().toString(16).slice(2);
  }

  async function post(api, pid, command, payload, reason, idempotencyKey) {
    const body = { occurred_at: new Date().toISOString(), payload };
    if (reason) body.reason = reason;
    return api(`/v1/patients/${encodeURIComponent(pid)}/commands/${command}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
      body: JSON.stringify(body),
    });
  }

  function row(q, role, when) {
    const on = q.on_version ? `v${esc(q.on_version)}${q.field ? " <code>" + esc(q.field) + "</code>" : ""}` : "patient";
    const by = esc(q.opened_by) + (q.rule ? ` <span class="badge">rule ${esc(q.rule)}</span>` : "");
    const steps = q.history.map((h) => `<li>v${esc(h.version)} ${esc(h.action)} → ${esc(h.status)} by ${esc(h.by)} <span class="small">(${esc(h.role)}, ${esc(when(h.occurred_at || h.at))}, recorded ${esc(when(h.at))})</span>${h.text ? ": " + esc(h.text) : ""}${h.reason ? " <i>reason: " + esc(h.reason) + "</i>" : ""}${h.correction != null ? " (correction v" + esc(h.correction) + ")" : ""}</li>`).join("");
    let actions = "";
    if (SITE.includes(role) && (q.status === "open" || q.status === "reopened")) {
      actions += `<form class="q-answer" data-query="${esc(q.query_id)}"><input name="text" placeholder="answer" size="28" required>
        <input name="correction" type="number" min="1" placeholder="correction v" size="6"><button>Answer</button></form>`;
    }
    if (MONITORS.includes(role) && q.status !== "closed") {
      actions += `<form class="q-close" data-query="${esc(q.query_id)}">${q.status === "answered" ? "" : '<input name="reason" placeholder="reason (not answered)" size="22" required>'}<button>Close</button></form>`;
    }
    if (MONITORS.includes(role) && (q.status === "answered" || q.status === "closed")) {
      actions += `<form class="q-reopen" data-query="${esc(q.query_id)}"><input name="text" placeholder="what is still wrong" size="24" required><button>Re-open</button></form>`;
    }
    return `<tr data-query="${esc(q.query_id)}" data-status="${esc(q.status)}"><td>${esc(q.query_id)}</td>
      <td><span class="badge ${STATUS_BADGE[q.status] || ""} q-status">${esc(q.status)}</span></td><td>${on}</td>
      <td class="q-text">${esc(q.text)}${q.answer ? `<br><span class="small">answer: ${esc(q.answer)}</span>` : ""}
        <details><summary class="small">${q.history.length} step(s)</summary><ul class="small">${steps}</ul></details></td>
      <td>${by}<br><span class="small" title="recorded ${esc(when(q.opened_at))}">${esc(when(q.opened_occurred_at || q.opened_at))}</span></td><td>${actions}</td></tr>`;
  }

  async function mount(element, options) {
    const { patientId: pid, api } = options;
    const when = options.formatTime || ((iso) => iso);
    let role = options.role;
    if (!role) {
      try { role = (await api("/v1/whoami")).role; } catch (e) { role = null; }
    }
    element.innerHTML = `<h2>Data queries</h2><p class="error q-error" role="alert"></p><div class="q-body">loading…</div>`;
    const errorBox = element.querySelector(".q-error");
    const body = element.querySelector(".q-body");

    async function act(form, work) {
      if (form.dataset.busy) return;  // sent already: a double click records the step once
      form.dataset.busy = "1";
      const button = form.querySelector("button");
      if (button) button.disabled = true;
      errorBox.textContent = "";
      try { await work(form.dataset.key); } catch (e) {
        errorBox.textContent = e.detail || e.message;
        // refused: what is sent next may differ, so under a new key; no answer at all (the
        // network): the same key, so that a retry cannot record the step twice
        if (e.status) form.dataset.key = key();
        delete form.dataset.busy;
        if (button) button.disabled = false;
        return;
      }
      await load();
    }

    async function load() {
      let queries;
      try { queries = await api(`/v1/patients/${encodeURIComponent(pid)}/queries`); }
      catch (e) { body.innerHTML = `<p class="error">${esc(e.detail || e.message)}</p>`; return; }
      const pending = queries.filter((q) => q.status !== "closed").length;
      let html = `<p class="q-summary">${queries.length} query(ies), ${pending} not closed</p>`;
      if (queries.length) {
        html += `<table class="q-table"><thead><tr><th>Query</th><th>Status</th><th>On</th><th>Question / answer</th><th>Opened by</th><th></th></tr></thead>
          <tbody>${queries.map((q) => row(q, role, when)).join("")}</tbody></table>`;
      }
      if (MONITORS.includes(role)) {
        html += `<form class="q-open"><b>Open a query</b> <input name="text" placeholder="question, e.g. D2 cells: the source says 1.8e7" size="40" required>
          on version <input name="on_version" type="number" min="1" size="5"> field <input name="field" placeholder="payload.cells" size="16">
          <button>Open query</button></form>`;
      }
      body.innerHTML = html;
      for (const form of body.querySelectorAll("form")) form.dataset.key = key();
      const open = body.querySelector("form.q-open");
      if (open) open.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const f = new FormData(open);
        const payload = { text: f.get("text") };
        if (f.get("on_version")) payload.on_version = Number(f.get("on_version"));
        if (f.get("field")) payload.field = f.get("field");
        act(open, (k) => post(api, pid, "open_query", payload, null, k));
      });
      for (const form of body.querySelectorAll("form.q-answer")) form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const f = new FormData(form);
        const payload = { query_id: form.dataset.query, text: f.get("text") };
        if (f.get("correction")) payload.correction = Number(f.get("correction"));
        act(form, (k) => post(api, pid, "answer_query", payload, null, k));
      });
      for (const form of body.querySelectorAll("form.q-close")) form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const f = new FormData(form);
        act(form, (k) => post(api, pid, "close_query", { query_id: form.dataset.query }, f.get("reason"), k));
      });
      for (const form of body.querySelectorAll("form.q-reopen")) form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const f = new FormData(form);
        act(form, (k) => post(api, pid, "reopen_query", { query_id: form.dataset.query, text: f.get("text") }, null, k));
      });
    }

    await load();
    return { reload: load, role };
  }

  window.cartQueries = { mount };
})();
