// corral's dashboard: one page, live over server-sent events (/api/events), actions as POSTs with
// the token in an Authorization header (never a cookie). Every value from the server is set with
// textContent: job payloads and errors are data, never markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SPAN = 300; // samples kept per chart (2 s apart in the history, 1 s live)
const series = { total: { processed: [], failed: [] }, work: {} };
let snapshot = null;
let logSource = null;

function say(text, ok) {
  const box = $("#message");
  box.textContent = text;
  box.className = ok ? "ok" : "error";
}

function token() { return sessionStorage.getItem("corral-token") || ""; }
// reads carry the token too (needed when the dashboard listens beyond loopback; EventSource cannot
// send a header, so it goes as a query parameter)
function withToken(url) { return token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url; }
let events = null;
function connect() {
  if (events) events.close();
  events = new EventSource(withToken("/api/events"));
  events.onmessage = (event) => render(JSON.parse(event.data));
  events.onerror = () => say("no answer from the supervisor (or a token is needed): retrying", false);
}

async function act(action, body, onLine) {
  const response = await fetch(`/api/act/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token()}` },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    say(`${action}: ${await response.text()}`, false);
    return null;
  }
  // one JSON object per line (a bulk action's progress), or one JSON answer
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", last = null;
  const take = (text) => { if (text.trim()) { last = JSON.parse(text); if (onLine) onLine(last); } };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      take(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 1);
    }
  }
  take(buffer);
  if (last && last.done) say(last.done, true);
  if (last && last.error) say(`${action}: ${last.error}`, false);
  return last;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function button(row, label, cls, onClick) {
  const td = document.createElement("td");
  td.className = "actions-only";
  const b = document.createElement("button");
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", onClick);
  td.appendChild(b);
  row.appendChild(td);
  return b;
}

function fill(table, rows, render) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren(...rows.map((item) => { const tr = document.createElement("tr"); render(tr, item); return tr; }));
}

const ago = (s) => (s === null || s === undefined ? "" : s < 90 ? `${s.toFixed(0)}s` : s < 5400 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`);
const mb = (b) => `${(b / 1048576).toFixed(0)} MB`;
const at = (t) => (t ? new Date(t * 1000).toISOString().replace(".000", "") : "-");

function push(list, value) { list.push(value); if (list.length > SPAN) list.shift(); }

function draw(svg, lines) {
  const max = Math.max(1, ...lines.flatMap(([values]) => values));
  svg.replaceChildren(...lines.map(([values, cls]) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    const step = 600 / Math.max(60, values.length - 1), start = 600 - step * (values.length - 1);
    line.setAttribute("points", values.map((v, i) => `${(start + i * step).toFixed(1)},${(118 - (v / max) * 112).toFixed(1)}`).join(" "));
    line.setAttribute("class", cls);
    return line;
  }));
  svg.dataset.points = String(lines[0][0].length);
  svg.dataset.last = String(lines[0][0].at(-1) ?? 0);
}

function record(sample) {
  push(series.total.processed, sample.processed);
  push(series.total.failed, sample.failed);
  for (const [name, [p, f]] of Object.entries(sample.work)) {
    const s = (series.work[name] ||= { processed: [], failed: [] });
    push(s.processed, p); push(s.failed, f);
  }
}

function drawCharts() {
  draw($("#chart-total"), [[series.total.processed, "processed"], [series.total.failed, "failed"]]);
  $("#rate-processed").textContent = String(series.total.processed.at(-1) ?? 0);
  $("#rate-failed").textContent = String(series.total.failed.at(-1) ?? 0);
  const box = $("#charts");
  for (const [name, s] of Object.entries(series.work)) {
    let chart = box.querySelector(`[data-name="${CSS.escape(name)}"]`);
    if (!chart) {
      chart = document.createElement("div");
      chart.className = "chart-box";
      chart.dataset.name = name;
      const title = document.createElement("h3");
      title.textContent = name;
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "chart"); svg.setAttribute("viewBox", "0 0 600 120"); svg.setAttribute("preserveAspectRatio", "none");
      chart.append(title, svg);
      box.appendChild(chart);
    }
    draw(chart.querySelector("svg"), [[s.processed, "processed"], [s.failed, "failed"]]);
  }
}

function sampleOf(status) {
  const work = {};
  for (const kind of ["queues", "streams"]) {
    for (const [name, row] of Object.entries(status.work[kind] || {})) {
      work[`${kind.slice(0, -1)}:${name}`] = [row.processed_per_s || 0, row.failed_per_s || 0];
    }
  }
  const sum = (i) => Math.round(Object.values(work).reduce((a, v) => a + v[i], 0) * 100) / 100;
  return { processed: sum(0), failed: sum(1), work };
}

function render(snap) {
  snapshot = snap;
  const st = snap.status;
  document.body.classList.toggle("read-only", !snap.actions || !snap.token_set);
  $("#token-form").hidden = !snap.token_set;
  $("#mode").textContent = !snap.actions ? "read-only" : snap.token_set ? "" : "read-only: no token configured";
  $("#pool").textContent = `${st.pool} on ${snap.host}`;
  $("#state").textContent = st.state;
  $("#state").className = `badge ${st.state}`;
  renderRedis(snap);
  if (document.activeElement !== $("#scale-n")) $("#scale-n").value = st.size;
  fill("#slots", st.slots, (tr, s) => {
    cell(tr, s.slot); cell(tr, s.state, `state-${s.state}`); cell(tr, s.pid); cell(tr, ago(s.uptime_s));
    cell(tr, mb(s.rss_bytes), "num"); cell(tr, `${s.cpu_percent.toFixed(0)}%`, "num"); cell(tr, s.processed, "num");
    cell(tr, s.failed, "num"); cell(tr, s.restarts, "num"); cell(tr, s.reason || "");
    if (s.state !== "draining") button(tr, "Recycle", "recycle", () => act("recycle", { slot: s.slot }));
  });
  const others = Object.entries(snap.hosts || {}).flatMap(([host, h]) => h.slots.map((s) => [host, s]));
  fill("#other-slots", others, (tr, [host, s]) => {
    cell(tr, host); cell(tr, s.slot); cell(tr, s.state, `state-${s.state}`); cell(tr, s.pid); cell(tr, ago(s.uptime_s));
    cell(tr, mb(s.rss_bytes), "num"); cell(tr, `${(s.cpu_percent || 0).toFixed(0)}%`, "num"); cell(tr, s.processed, "num");
    cell(tr, s.failed, "num"); cell(tr, s.restarts, "num");
  });
  fill("#members", Object.entries(snap.members || {}), (tr, [host, workers]) => { cell(tr, host); cell(tr, workers.join(", "), "wrap"); });
  renderWork(snap);
  fill("#schedules", snap.schedules || [], (tr, s) => {
    cell(tr, s.name); cell(tr, s.when); cell(tr, s.target); cell(tr, at(s.last_tick_s)); cell(tr, at(s.next_tick_s));
    cell(tr, s.fired, "num"); cell(tr, s.missed, "num"); cell(tr, s.overlapped, "num"); cell(tr, s.last_job || "");
  });
  fillChoices(snap);
  record(sampleOf(st));
  drawCharts();
}

// a slot whose child cannot reach Redis (state redis-down) makes the header say which Redis, since when
function renderRedis(snap) {
  const st = snap.status;
  const since = Math.min(...st.slots.map((s) => s.redis_down_since || Infinity));
  const url = st.redis_url ? ` · ${st.redis_url}` : "";
  const box = $("#redis");
  box.textContent = since < Infinity ? `Redis unreachable since ${at(Math.floor(since))}${url}` : `redis ${snap.redis || ""}${url}`;
  box.className = since < Infinity ? "alert" : "muted";
}

function renderWork(snap) {
  const live = snap.status.work;
  fill("#work", snap.work || [], (tr, w) => {
    const figures = (live[`${w.kind}s`] || {})[w.name] || {};
    tr.dataset.name = w.name;
    cell(tr, w.kind); cell(tr, w.name); cell(tr, w.depth, "num depth"); cell(tr, figures.in_flight || 0, "num");
    cell(tr, w.retrying, "num"); cell(tr, w.delayed, "num"); cell(tr, w.dead, "num dead"); cell(tr, figures.lag || 0, "num");
    cell(tr, (figures.processed_per_s || 0).toFixed(1), "num"); cell(tr, (figures.failed_per_s || 0).toFixed(1), "num");
    cell(tr, w.paused ? "paused" : (figures.throttled ? `throttled ${figures.throttled}` : ""), w.paused ? "paused state" : "state");
    cell(tr, w.rate_limit || ""); cell(tr, w.shards, "num"); cell(tr, w.where || "", "wrap");
    button(tr, w.paused ? "Resume" : "Pause", w.paused ? "resume" : "pause", () => act(w.paused ? "resume" : "pause", { name: w.name }));
  });
}

function fillChoices(snap) {
  const names = (snap.work || []).map((w) => w.name);
  const select = $("#dead-name");
  if (select.options.length !== names.length) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
  const logs = $("#log-slot");
  const wanted = ["supervisor", ...new Set(snap.status.slots.map((s) => String(s.slot)))];
  if (logs.options.length !== wanted.length) {
    const chosen = logs.value;
    logs.replaceChildren(...wanted.map((n) => new Option(n === "supervisor" ? n : `slot ${n}`, n)));
    if (wanted.includes(chosen)) logs.value = chosen;
  }
}

async function searchDead() {
  const name = $("#dead-name").value;
  if (!name) return;
  const query = new URLSearchParams({ name, grep: $("#dead-grep").value, limit: "200" });
  const response = await fetch(withToken(`/api/dead?${query}`));
  if (!response.ok) { say(await response.text(), false); return; }
  const found = await response.json();
  $("#dead-count").textContent = `${found.letters.length} shown of ${found.total}`;
  fill("#dead-list", found.letters, (tr, l) => {
    tr.dataset.id = l.id;
    const td = document.createElement("td"); td.className = "actions-only";
    const box = document.createElement("input"); box.type = "checkbox"; box.className = "pick"; box.value = l.id;
    td.appendChild(box); tr.appendChild(td);
    cell(tr, l.id); cell(tr, at(l.failed_at)); cell(tr, l.attempts, "num");
    folded(tr, l.error); cell(tr, l.payload, "wrap");
    button(tr, "Retry", "retry-one", () => dead("retry", { ids: [l.id] }));
  });
}

async function dead(verb, what) {
  const bar = $("#dead-progress");
  bar.hidden = false; bar.removeAttribute("value");
  const result = await act("dead", { do: verb, name: $("#dead-name").value, ...what }, (line) => {
    if (line.total) { bar.max = line.total; bar.value = line.n; }
  });
  bar.hidden = true;
  if (result) await searchDead();
}

function folded(row, text) {
  // an error is a traceback: its last line shown, the whole of it one click away
  const td = document.createElement("td");
  td.className = "wrap";
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  const lines = String(text || "").trim().split("\n");
  summary.textContent = lines.at(-1);
  const pre = document.createElement("pre");
  pre.textContent = text;
  details.append(summary, pre);
  td.appendChild(details);
  row.appendChild(td);
}

const picked = () => [...document.querySelectorAll("#dead-list .pick:checked")].map((b) => b.value);

function followLog() {
  if (logSource) logSource.close();
  const pre = $("#log");
  pre.textContent = "";
  logSource = new EventSource(withToken(`/api/logs?slot=${encodeURIComponent($("#log-slot").value || "supervisor")}`));
  logSource.onmessage = (event) => {
    pre.textContent += JSON.parse(event.data) + "\n";
    if (pre.textContent.length > 400000) pre.textContent = pre.textContent.slice(-300000);
    pre.scrollTop = pre.scrollHeight;
  };
}

function show(tab) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  document.querySelectorAll("section.tab").forEach((s) => { s.hidden = s.id !== `tab-${tab}`; });
  if (tab === "dead") searchDead();
  if (tab === "logs") followLog();
  else if (logSource) { logSource.close(); logSource = null; }
}

async function start() {
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
  $("#token").value = token();
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("corral-token", $("#token").value);
    say("token set for this tab", true);
    connect();
  });
  $("#dead-form").addEventListener("submit", (e) => { e.preventDefault(); searchDead(); });
  const selected = (verb) => () => (picked().length ? dead(verb, { ids: picked() }) : say("nothing selected", false));
  $("#dead-retry-selected").addEventListener("click", selected("retry"));
  $("#dead-delete-selected").addEventListener("click", selected("delete"));
  $("#dead-retry-all").addEventListener("click", () => dead("retry", { grep: $("#dead-grep").value }));
  $("#dead-delete-all").addEventListener("click", () => dead("delete", { grep: $("#dead-grep").value }));
  $("#scale").addEventListener("click", () => act("scale", { workers: Number($("#scale-n").value) }));
  $("#reload").addEventListener("click", () => act("reload", {}));
  $("#log-slot").addEventListener("change", followLog);
  const answer = await fetch(withToken("/api/history"));
  if (answer.ok) (await answer.json()).forEach(record);
  connect();
}

start();
