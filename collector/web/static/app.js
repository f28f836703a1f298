// gpuguard timeline page: plain JS + SVG, no library, nothing fetched from elsewhere.
// Data comes from /api/* with a bearer token (reader role) kept in sessionStorage; "#token=..." in the
// address sets it once and is then removed from the address bar.
"use strict";

const PAGE = 5000;            // events per request; "more" asks for the next page
const ROWS = 400;             // event rows rendered at a time in the table
const KINDS = ["exec", "connect", "gpu_open", "gpu_usage", "exit", "enforcement", "gap", "capture_loss"];

function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "rect", "circle", "line", "text", "title", "path"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("gpuguard-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.hash.replace(/[#&]?token=[^&]+/, "") || "#/");
  }
  return sessionStorage.getItem("gpuguard-token") || "";
}

async function api(path) {
  const res = await fetch("api/" + path, { headers: { Authorization: "Bearer " + token() } });
  if (res.status === 401) { showLogin(); throw new Error("not authorised"); }
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function showLogin() {
  const form = document.getElementById("login");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem("gpuguard-token", document.getElementById("token").value.trim());
    form.hidden = true;
    route();
  };
}

const us = (ns) => (ns ? Number(String(ns).slice(0, -3)) : 0);         // int64 ns (a string) -> microseconds
const when = (ns) => (ns ? new Date(us(ns) / 1000).toISOString().replace("T", " ").replace("Z", "") : "-");
const kindOf = (ev) => KINDS.find((k) => ev[k] !== undefined) || "status";
const sevClass = (s) => (s === "critical" ? "crit" : s || "info");

function describe(ev) {
  const k = kindOf(ev);
  if (k === "exec") return `${ev.exec.filename} ${(ev.exec.argv || []).slice(1).join(" ")}`.slice(0, 200);
  if (k === "connect") return `${ev.connect.proto} ${ev.connect.daddr}:${ev.connect.dport} (${ev.connect.result || 0})`;
  if (k === "gpu_open") return ev.gpu_open.path;
  if (k === "gpu_usage") {
    const g = ev.gpu_usage;
    return `GPU ${g.gpu || 0}: SM ${g.sm_util || 0}%, ${Math.round(Number(g.memory_bytes || 0) / 1048576)} MiB (device ${g.device_util || 0}%)`;
  }
  if (k === "exit") return ev.exit.signal ? `signal ${ev.exit.signal}` : `code ${ev.exit.code || 0}`;
  if (k === "enforcement") return `${ev.enforcement.action}: ${ev.enforcement.detail || ""} [${ev.enforcement.rule_id}]`;
  if (k === "gap") return `events ${ev.gap.from_seq}..${ev.gap.to_seq} lost (${ev.gap.reason})`;
  if (k === "capture_loss") {
    const counts = (m) => Object.entries(m || {}).map(([kind, n]) => `${n} ${kind}`).join(", ");
    const s = counts(ev.capture_loss.suppressed), l = counts(ev.capture_loss.lost);
    return `INCOMPLETE: ${s ? s + " over the job's budget" : ""}${s && l ? "; " : ""}${l ? l + " lost (ring full)" : ""}`;
  }
  return k;
}

// ---- job list --------------------------------------------------------------------------------
async function jobsView(view) {
  const data = await api("jobs?limit=200");
  const rows = (data.jobs || []).map((j) => el("tr", { class: Number(j.alerts || 0) ? "hot job" : "job", "data-job": j.job.id },
    el("td", {}, el("a", { href: `#/job/${encodeURIComponent(j.job.id)}` }, `${j.job.kind}:${j.job.id}`)),
    el("td", {}, (j.hosts || []).join(", ")),
    el("td", {}, when(j.first_ts_ns)), el("td", {}, when(j.last_ts_ns)),
    el("td", { class: "num" }, j.events || 0),
    el("td", { class: "num" }, Number(j.alerts || 0) ? el("span", { class: "badge high" }, j.alerts) : "0"),
    el("td", {}, j.gpu ? el("span", { class: "badge gpu" }, "GPU") : "")));
  view.replaceChildren(el("h2", {}, "Jobs, most recent first"),
    el("table", { id: "jobs" }, el("tr", {}, ["job", "hosts", "first", "last", "events", "alerts", "GPU"].map((h) => el("th", {}, h))), rows));
}

// ---- one job ---------------------------------------------------------------------------------
const state = { job: "", events: [], alerts: [], truncated: false, filters: { host: "", kinds: new Set(KINDS), since: "", until: "" } };

function query(extra = "") {
  const f = state.filters;
  const kinds = KINDS.filter((k) => f.kinds.has(k)).map((k) => `&kind=${k}`).join("");
  const t = (s) => (s ? String(BigInt(Date.parse(s + "Z")) * 1000000n) : "");
  return `job=${encodeURIComponent(state.job)}&host=${encodeURIComponent(f.host)}${kinds}` +
    `&since=${t(f.since)}&until=${t(f.until)}&limit=${PAGE}${extra}`;
}

async function jobView(view, job) {
  state.job = job;
  const [tl, tree] = await Promise.all([api("timeline?" + query()), api(`tree?job=${encodeURIComponent(job)}`)]);
  state.events = tl.events || [];
  state.alerts = (tl.alerts || []).sort((a, b) => us(a.ts_ns) - us(b.ts_ns));
  state.truncated = !!tl.truncated;
  state.cursor = tl.next_cursor || "";
  state.tree = tree.nodes || [];
  state.destinations = tl.destinations || [];
  renderJob(view);
}

async function loadMore(view) {
  // the collector pages by bytes as well as rows: continue exactly after the last event it sent
  const tl = await api("timeline?" + query(`&cursor=${encodeURIComponent(state.cursor)}`));
  state.events = state.events.concat(tl.events || []);
  state.truncated = !!tl.truncated;
  state.cursor = tl.next_cursor || "";
  renderJob(view);
}

function filtersBar(view) {
  const hosts = [...new Set(state.tree.map((n) => n.host_id).concat(state.events.map((e) => e.host_id)))].sort();
  const f = state.filters;
  const host = el("select", { id: "f-host" }, el("option", { value: "" }, "all hosts"),
    hosts.map((h) => el("option", { value: h, selected: f.host === h }, h)));
  const kinds = KINDS.map((k) => el("label", {}, el("input", { type: "checkbox", "data-kind": k, checked: f.kinds.has(k) }), " " + k));
  const since = el("input", { id: "f-since", type: "datetime-local", step: "1", value: f.since });
  const until = el("input", { id: "f-until", type: "datetime-local", step: "1", value: f.until });
  const apply = el("button", { onclick: async () => {
    f.host = host.value; f.since = since.value; f.until = until.value;
    f.kinds = new Set([...view.querySelectorAll("input[data-kind]")].filter((c) => c.checked).map((c) => c.dataset.kind));
    await jobView(view, state.job);
  } }, "apply");
  return el("div", { class: "filters" }, host, " ", kinds, " from ", since, " to ", until, " ", apply);
}

// Lanes: one per host, and inside it one per process subtree: the job's top process, and each subtree
// under it (followed through parent keys).
function lanesOf(events) {
  const parent = new Map();
  for (const e of events) {
    const p = e.event.process || {};
    if (p.key && p.parent_key) parent.set(p.key, p.parent_key);
  }
  const known = new Set(events.map((e) => (e.event.process || {}).key).filter(Boolean));
  const lanes = new Map();
  for (const e of events) {
    const p = e.event.process || {};
    const chain = [p.key || "?"];                       // this process, then its ancestors seen in the job
    for (let i = 0; i < 64 && parent.has(chain[chain.length - 1]) && known.has(parent.get(chain[chain.length - 1])); i++) {
      chain.push(parent.get(chain[chain.length - 1]));
    }
    const rootKey = chain.length > 1 ? chain[chain.length - 2] : chain[0];   // a subtree under the job's top process
    const id = `${e.host_id}|${rootKey}`;
    if (!lanes.has(id)) lanes.set(id, { host: e.host_id, root: rootKey, label: "", events: [] });
    const lane = lanes.get(id);
    if (p.key === rootKey && !lane.label) lane.label = `${p.comm || "?"} (${p.pid || "?"})`;
    lane.events.push(e);
  }
  return [...lanes.values()].sort((a, b) => (a.host + a.label).localeCompare(b.host + b.label));
}

function timelineSvg() {
  const evs = state.events;
  if (!evs.length) return el("p", { class: "muted" }, "no events match");
  const lanes = lanesOf(evs);
  const t0 = Math.min(...evs.map((e) => us(e.event.ts_ns)), ...state.alerts.map((a) => us(a.ts_ns)));
  const t1 = Math.max(...evs.map((e) => us(e.event.ts_ns)), ...state.alerts.map((a) => us(a.ts_ns)), t0 + 1);
  const W = 1100, left = 230, laneH = 22, top = 24, H = top + lanes.length * laneH + 30;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 20);
  const svg = el("svg", { id: "timeline", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    svg.append(el("text", { class: "axis", x: x(t), y: 14, "text-anchor": "middle" }, new Date(t / 1000).toISOString().slice(11, 23)));
  }
  lanes.forEach((lane, i) => {
    const y = top + i * laneH;
    const g = el("g", { class: "lane", "data-host": lane.host, "data-root": lane.root });
    g.append(el("rect", { class: "lane-bg", x: left, y: y + 2, width: W - left - 20, height: laneH - 4 }),
      el("text", { class: "lane-label", x: 4, y: y + 15 }, `${lane.host} · ${lane.label || lane.root.slice(0, 12)}`));
    // thousands of events: one mark per (pixel column, kind) per lane, with a count in its tooltip
    const cells = new Map();
    for (const e of lane.events) {
      const k = kindOf(e.event), px = Math.round(x(us(e.event.ts_ns)));
      const key = `${px}|${k}`;
      if (!cells.has(key)) cells.set(key, { px, k, n: 0, first: e });
      cells.get(key).n++;
    }
    for (const c of cells.values()) {
      const dy = { exec: 6, connect: 10, gpu_open: 14, exit: 18, enforcement: 10, gap: 10 }[c.k] || 10;
      const mark = c.k === "enforcement"
        ? el("path", { class: "mark m-enforcement", d: `M${c.px - 4},${y + dy - 4} l8,8 m0,-8 l-8,8`, stroke: "#d7263d", "stroke-width": 2 })
        : el("circle", { class: `mark m-${c.k}`, cx: c.px, cy: y + dy, r: c.k === "gpu_open" ? 4 : 3 });
      mark.dataset.kind = c.k;
      mark.append(el("title", {}, `${c.n > 1 ? c.n + " x " : ""}${c.k} ${describe(c.first.event)}`));
      g.append(mark);
    }
    svg.append(g);
  });
  // windows where the kernel could not report everything for this job: shaded, never silently blank
  for (const e of state.events.filter((e) => kindOf(e.event) === "capture_loss")) {
    const c = e.event.capture_loss, x0 = x(us(c.from_ts_ns || e.event.ts_ns)), x1 = x(us(c.to_ts_ns || e.event.ts_ns));
    const band = el("rect", { class: "incomplete", x: Math.min(x0, x1), y: top, width: Math.max(Math.abs(x1 - x0), 3), height: H - 26 - top });
    band.append(el("title", {}, describe(e.event)));
    svg.append(band);
  }
  state.alerts.forEach((a, i) => {
    const ax = x(us(a.ts_ns));
    const g = el("g", { class: "alert-mark", "data-rule": a.rule_id });
    g.append(el("line", { class: "alert-line", x1: ax, x2: ax, y1: top, y2: H - 26 }),
      el("text", { class: "axis", x: ax + 2, y: H - 14 - (i % 2) * 8 }, a.rule_id),
      el("title", {}, `${a.severity} ${a.rule_id}: ${a.outcome}`));
    svg.append(g);
  });
  return svg;
}

function alertsTable(view) {
  if (!state.alerts.length) return el("p", { id: "no-alerts", class: "muted" }, "no alerts for this job");
  return el("table", { id: "alerts" }, el("tr", {}, ["time", "severity", "rule", "host", "process", "outcome", "evidence"].map((h) => el("th", {}, h))),
    state.alerts.map((a) => el("tr", { class: "alert", "data-rule": a.rule_id },
      el("td", {}, when(a.ts_ns)), el("td", {}, el("span", { class: `badge ${sevClass(a.severity)}` }, a.severity)),
      el("td", {}, a.rule_id, el("div", { class: "muted" }, a.description || "")), el("td", {}, a.host_id),
      el("td", {}, `${(a.process || {}).comm || ""} (${(a.process || {}).pid || ""})`), el("td", {}, a.outcome || ""),
      el("td", {}, (a.evidence_seqs || []).slice(0, 12).map((s) => el("a", {
        href: `#ev-${a.host_id}-${s}`, class: "ev-link", onclick: () => highlight(view, a),
      }, `#${s} `))))));
}

function highlight(view, alert) {
  const seqs = new Set((alert.evidence_seqs || []).map(String));
  for (const row of view.querySelectorAll("tr.event")) {
    row.classList.toggle("evidence", row.dataset.host === alert.host_id && seqs.has(row.dataset.seq));
  }
}

function treeList() {
  const byParent = new Map(), keys = new Set(state.tree.map((n) => n.key));
  for (const n of state.tree) {
    const parent = keys.has(n.parent_key) ? n.parent_key : "";
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(n);
  }
  const render = (parent, depth) => el("ul", { class: "tree" }, (byParent.get(parent) || []).map((n) => el("li", { "data-key": n.key },
    n.used_gpu ? el("span", { class: "badge gpu" }, "GPU") : "", ` ${n.comm} (${n.pid}) `,
    el("span", { class: "muted" }, `${n.host_id} ${(n.argv || []).join(" ").slice(0, 120)}`),
    depth < 40 ? render(n.key, depth + 1) : "")));
  return el("div", { id: "tree" }, el("h3", {}, "Process tree"), render("", 0));
}

function destinations() {
  return el("div", { id: "destinations" }, el("h3", {}, "Network destinations"),
    el("table", {}, el("tr", {}, ["destination", "proto", "connects", "last result"].map((h) => el("th", {}, h))),
      state.destinations.map((d) => el("tr", {}, el("td", {}, `${d.daddr}:${d.dport}`), el("td", {}, d.proto || ""),
        el("td", { class: "num" }, d.count || 0), el("td", {}, d.last_result || 0)))));
}

function eventsTable(view, shown = ROWS) {
  const rows = state.events.slice(0, shown).map((e) => el("tr", {
    class: "event", id: `ev-${e.host_id}-${e.event.seq}`, "data-host": e.host_id, "data-seq": e.event.seq, "data-kind": kindOf(e.event),
  }, el("td", {}, when(e.event.ts_ns)), el("td", {}, e.host_id), el("td", {}, `${(e.event.process || {}).comm || ""} (${(e.event.process || {}).pid || ""})`),
    el("td", {}, kindOf(e.event)), el("td", {}, describe(e.event))));
  const more = [];
  if (shown < state.events.length) more.push(el("button", { onclick: () => view.querySelector("#events").replaceWith(eventsTable(view, shown + ROWS)) }, `show ${ROWS} more rows`));
  if (state.truncated) more.push(el("button", { id: "more", onclick: () => loadMore(view) }, `load the next ${PAGE} events`));
  return el("div", { id: "events" }, el("h3", {}, `Events (${state.events.length}${state.truncated ? "+" : ""})`),
    el("table", {}, el("tr", {}, ["time", "host", "process", "kind", "what"].map((h) => el("th", {}, h))), rows), more);
}

function renderJob(view) {
  view.replaceChildren(el("h2", { id: "job-title" }, `Job ${state.job}`), filtersBar(view), timelineSvg(),
    el("h3", {}, "Alerts and blocks"), alertsTable(view), el("div", { class: "cols" }, treeList(), destinations()), eventsTable(view));
  document.body.dataset.ready = "job";
}

async function route() {
  const view = document.getElementById("view");
  if (!token()) return showLogin();
  try {
    const me = await api("whoami");
    document.getElementById("who").textContent = `${me.name} (${me.role})`;
    const m = location.hash.match(/^#\/job\/(.+)$/);
    if (m) await jobView(view, decodeURIComponent(m[1]));
    else { await jobsView(view); document.body.dataset.ready = "jobs"; }
  } catch (err) {
    view.replaceChildren(el("p", { id: "error" }, String(err.message || err)));
  }
}

window.addEventListener("hashchange", route);
route();
