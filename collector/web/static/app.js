// gpuguard timeline page: plain JS + SVG, no library, nothing fetched from elsewhere.
// Data comes from /api/* with a bearer token (reader role) kept in sessionStorage; "#token=..." in the
// address sets it once and is then removed from the address bar.
"use strict";

const PAGE = 5000;            // events per request; "more" asks for the next page
const ROWS = 400;             // event rows rendered at a time in the table
const KINDS = ["exec", "connect", "listen", "inbound", "tls", "dns", "datagram", "socket", "gpu_open", "gpu_usage", "exit", "enforcement",
  "gap", "capture_loss"];

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
  if (k === "exec") return `${ev.exec.filename} ${(ev.exec.argv || []).slice(1).join(" ")}`;   // whole: it wraps
  if (k === "connect") return `${ev.connect.proto} ${ev.connect.daddr}:${ev.connect.dport} (${ev.connect.result || 0})`;
  if (k === "listen") return `listening on tcp ${ev.listen.addr}:${ev.listen.port || 0}`;
  if (k === "inbound") return `${ev.inbound.proto || "tcp"} from ${ev.inbound.peer}:${ev.inbound.peer_port || 0} to port ${ev.inbound.local_port || 0}`;
  if (k === "tls") return `TLS to ${ev.tls.daddr}:${ev.tls.dport} sni=${ev.tls.sni || "(none)"}`;
  if (k === "dns") return `DNS ${ev.dns.qtype || "?"} ${ev.dns.name || ""}`;
  if (k === "datagram") return `UDP ${ev.datagram.shape || "?"} to ${ev.datagram.daddr}:${ev.datagram.dport}`;
  if (k === "socket") return `${ev.socket.what} socket (${ev.socket.result || 0})`;
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
const state = { job: "", events: [], alerts: [], truncated: false, zoom: null, live: false, stream: null, hostnames: {},
  filters: { host: "", kinds: new Set(KINDS), since: "", until: "" } };

function query(extra = "") {
  const f = state.filters;
  const kinds = KINDS.filter((k) => f.kinds.has(k)).map((k) => `&kind=${k}`).join("");
  const t = (s) => (s ? String(BigInt(Date.parse(s + "Z")) * 1000000n) : "");
  return `job=${encodeURIComponent(state.job)}&host=${encodeURIComponent(f.host)}${kinds}` +
    `&since=${t(f.since)}&until=${t(f.until)}&limit=${PAGE}${extra}`;
}

async function jobView(view, job, refresh = false) {
  if (!refresh) {
    const z = location.hash.match(/[?&]from=(\d+)&to=(\d+)/);          // a shared link may name a window (ns)
    state.zoom = z ? [Number(BigInt(z[1]) / 1000n), Number(BigInt(z[2]) / 1000n)] : null;
    state.live = /[?&]live=1/.test(location.hash);
  }
  state.job = job;
  const [tl, tree, hosts] = await Promise.all([api("timeline?" + query()), api(`tree?job=${encodeURIComponent(job)}`),
    api("hosts").catch(() => ({ hosts: [] }))]);
  state.hostnames = Object.fromEntries((hosts.hosts || []).filter((h) => h.hostname).map((h) => [h.host_id, h.hostname]));
  state.events = tl.events || [];
  state.alerts = (tl.alerts || []).sort((a, b) => us(a.ts_ns) - us(b.ts_ns));
  state.truncated = !!tl.truncated;
  state.cursor = tl.next_cursor || "";
  state.tree = tree.nodes || [];
  state.destinations = tl.destinations || [];
  renderJob(view);
  if (!refresh) schedule(view);
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

// Lanes: one per host and process subtree under the job's top process (followed through parent keys), labelled
// by what its top process ran last (not the wrapper it started as); GPU users first; lanes that only started and
// ended processes (set-up noise) folded into one per host.
const BEHAVIOUR = new Set(["connect", "gpu_open", "gpu_usage", "enforcement", "capture_loss", "tls", "dns", "datagram", "socket", "inbound", "listen"]);
const base = (path) => String(path || "?").split("/").pop();

function lanesOf(events) {
  const parent = new Map(), lastExec = new Map();
  for (const e of events) {
    const p = e.event.process || {};
    if (p.key && p.parent_key) parent.set(p.key, p.parent_key);
    if (e.event.exec && p.key) lastExec.set(p.key, e.event.exec);
  }
  const known = new Set(events.map((e) => (e.event.process || {}).key).filter(Boolean));
  const alerted = new Set(state.alerts.map((a) => (a.process || {}).key).filter(Boolean));
  const lanes = new Map();
  for (const e of events) {
    const p = e.event.process || {};
    const chain = [p.key || "?"];
    for (let i = 0; i < 64 && parent.has(chain[chain.length - 1]) && known.has(parent.get(chain[chain.length - 1])); i++) {
      chain.push(parent.get(chain[chain.length - 1]));
    }
    const rootKey = chain.length > 1 ? chain[chain.length - 2] : chain[0];
    const id = `${e.host_id}|${rootKey}`;
    if (!lanes.has(id)) lanes.set(id, { host: e.host_id, root: rootKey, events: [], gpu: false, busy: false, alerted: false, comm: "" });
    const lane = lanes.get(id);
    const k = kindOf(e.event);
    lane.gpu ||= k === "gpu_open" || k === "gpu_usage";
    lane.busy ||= BEHAVIOUR.has(k);
    lane.alerted ||= alerted.has(p.key);
    if (p.key === rootKey && !lane.comm) lane.comm = `${p.comm || "?"} (${p.pid || "?"})`;
    lane.events.push(e);
  }
  const out = [], folded = new Map();
  for (const lane of lanes.values()) {
    const ex = lastExec.get(lane.root);
    lane.label = ex ? `${base(ex.filename)} ${(ex.argv || []).slice(1).find((a) => !a.startsWith("-")) || ""}`.trim() : lane.comm;
    if (lane.busy || lane.alerted || lane.gpu) { out.push(lane); continue; }
    if (!folded.has(lane.host)) folded.set(lane.host, { host: lane.host, root: "folded", events: [], folded: 0, label: "" });
    const f = folded.get(lane.host);
    f.folded++;
    f.events.push(...lane.events);
  }
  for (const f of folded.values()) f.label = `${f.folded} set-up and short process${f.folded > 1 ? "es" : ""} (folded)`;
  const rank = (l) => (l.gpu ? 0 : l.alerted ? 1 : l.folded ? 3 : 2);
  out.sort((a, b) => rank(a) - rank(b) || (a.host + a.label).localeCompare(b.host + b.label));
  return out.concat([...folded.values()]);
}

// Process lifetimes: exec (or first event) to exit (or the last event seen), one bar per process in its lane.
function spansOf(lane) {
  const spans = new Map();
  for (const e of lane.events) {
    const p = e.event.process || {}, t = us(e.event.ts_ns);
    if (!p.key) continue;
    if (!spans.has(p.key)) spans.set(p.key, { t0: t, t1: t, comm: p.comm || "?", pid: p.pid, ended: false, what: "" });
    const sp = spans.get(p.key);
    sp.t0 = Math.min(sp.t0, t); sp.t1 = Math.max(sp.t1, t);
    if (e.event.exec) sp.what = `${base(e.event.exec.filename)} ${(e.event.exec.argv || []).slice(1).join(" ")}`.slice(0, 160);
    if (e.event.exit) { sp.ended = true; sp.exit = e.event.exit.signal ? `signal ${e.event.exit.signal}` : `exit ${e.event.exit.code || 0}`; }
  }
  return [...spans.values()];
}

const LEGEND = [["exec", "exec"], ["connect", "connect"], ["gpu_open", "GPU open"], ["gpu_usage", "GPU busy"],
  ["exit", "exit"], ["enforcement", "blocked / killed"], ["span", "process lifetime"], ["alert", "alert"],
  ["incomplete", "capture incomplete"]];

function legend(x0, y0) {
  const g = el("g", { id: "legend" });
  LEGEND.forEach(([k, label], i) => {
    const x = x0 + i * 118, y = y0;
    let mark;
    if (k === "enforcement") mark = el("path", { class: "mark m-enforcement", d: `M${x - 4},${y - 4} l8,8 m0,-8 l-8,8`, stroke: "#d7263d", "stroke-width": 2 });
    else if (k === "span") mark = el("rect", { class: "span", x: x - 6, y: y - 2, width: 12, height: 4 });
    else if (k === "alert") mark = el("line", { class: "alert-line", x1: x, x2: x, y1: y - 6, y2: y + 6 });
    else if (k === "incomplete") mark = el("rect", { class: "incomplete", x: x - 6, y: y - 6, width: 12, height: 12 });
    else mark = el("circle", { class: `mark m-${k}`, cx: x, cy: y, r: 4 });
    g.append(el("g", { class: "legend-item", "data-kind": k }, mark, el("text", { class: "axis", x: x + 9, y: y + 4 }, label)));
  });
  return g;
}

// Alert labels on rows of their own above the lanes, never on top of each other and never cut.
function alertRows(alerts, x, W) {
  const rows = [];
  return alerts.map((a) => {
    const ax = x(us(a.ts_ns)), w = 7 * a.rule_id.length + 12;
    const lx = Math.max(4, Math.min(ax + 3, W - 4 - w));      // near the right edge the label sits to its left
    let r = rows.findIndex((end) => end < lx);
    if (r < 0) { rows.push(0); r = rows.length - 1; }
    rows[r] = lx + w;
    return { a, ax, lx, row: r };
  });
}

function timelineSvg(view) {
  const all = state.events;
  if (!all.length) return el("p", { class: "muted" }, "no events match");
  const z = state.zoom;
  const evs = z ? all.filter((e) => us(e.event.ts_ns) >= z[0] && us(e.event.ts_ns) <= z[1]) : all;
  const alerts = z ? state.alerts.filter((a) => us(a.ts_ns) >= z[0] && us(a.ts_ns) <= z[1]) : state.alerts;
  const lanes = lanesOf(evs);
  const t0 = z ? z[0] : Math.min(...evs.map((e) => us(e.event.ts_ns)), ...alerts.map((a) => us(a.ts_ns)));
  const t1 = z ? z[1] : Math.max(...evs.map((e) => us(e.event.ts_ns)), ...alerts.map((a) => us(a.ts_ns)), t0 + 1);
  const W = 1300, left = 300, laneH = 26;
  const x = (t) => left + ((t - t0) / Math.max(t1 - t0, 1)) * (W - left - 20);
  const placed = alertRows(alerts, x, W);
  const alertRowsN = Math.max(0, ...placed.map((p) => p.row + 1));
  const top = 44 + alertRowsN * 14, H = top + lanes.length * laneH + 40;
  const svg = el("svg", { id: "timeline", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-t0": t0, "data-t1": t1 });
  svg.append(legend(14, 12));
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    svg.append(el("text", { class: "axis", x: x(t), y: H - 8, "text-anchor": "middle" }, new Date(t / 1000).toISOString().slice(11, 23)));
  }
  lanes.forEach((lane, i) => {
    const y = top + i * laneH;
    const host = state.hostnames[lane.host] || lane.host.slice(0, 14);
    const g = el("g", { class: "lane", "data-host": lane.host, "data-root": lane.root, "data-gpu": lane.gpu ? "1" : "0" });
    g.append(el("rect", { class: "lane-bg", x: left, y: y + 2, width: W - left - 20, height: laneH - 4 }),
      el("text", { class: "lane-label", x: 4, y: y + 16 }, `${lane.gpu ? "GPU · " : ""}${host} · ${lane.label}`.slice(0, 48)),
      el("title", {}, `${lane.host} · ${lane.label}`));
    for (const sp of spansOf(lane)) {
      const bar = el("rect", { class: `span${sp.ended ? "" : " open"}`, x: x(sp.t0), y: y + 20, width: Math.max(x(sp.t1) - x(sp.t0), 2), height: 3 });
      bar.append(el("title", {}, `${sp.comm} (${sp.pid}): ${sp.what || "(no exec seen)"}${sp.ended ? ", " + sp.exit : ", still running"}`));
      g.append(bar);
    }
    const cells = new Map();        // thousands of events: one mark per (pixel column, kind), a count in its tooltip
    for (const e of lane.events) {
      const k = kindOf(e.event), px = Math.round(x(us(e.event.ts_ns)));
      const key = `${px}|${k}`;
      if (!cells.has(key)) cells.set(key, { px, k, n: 0, first: e });
      cells.get(key).n++;
    }
    for (const c of cells.values()) {
      const dy = { exec: 6, connect: 11, gpu_open: 15, gpu_usage: 15, exit: 18, enforcement: 11, gap: 11 }[c.k] || 11;
      const mark = c.k === "enforcement"
        ? el("path", { class: "mark m-enforcement", d: `M${c.px - 4},${y + dy - 4} l8,8 m0,-8 l-8,8`, stroke: "#d7263d", "stroke-width": 2 })
        : el("circle", { class: `mark m-${c.k}`, cx: c.px, cy: y + dy, r: c.k === "gpu_open" || c.k === "gpu_usage" ? 4 : 3 });
      mark.dataset.kind = c.k;
      mark.append(el("title", {}, `${c.n > 1 ? c.n + " x " : ""}${c.k} ${describe(c.first.event)}`));
      g.append(mark);
    }
    svg.append(g);
  });
  for (const e of evs.filter((e) => kindOf(e.event) === "capture_loss")) {
    const c = e.event.capture_loss, x0 = x(us(c.from_ts_ns || e.event.ts_ns)), x1 = x(us(c.to_ts_ns || e.event.ts_ns));
    const band = el("rect", { class: "incomplete", x: Math.min(x0, x1), y: top, width: Math.max(Math.abs(x1 - x0), 3), height: H - 26 - top });
    band.append(el("title", {}, describe(e.event)));
    svg.append(band);
  }
  for (const { a, ax, lx, row } of placed) {
    const ly = 30 + row * 14;
    svg.append(el("g", { class: "alert-mark", "data-rule": a.rule_id },
      el("line", { class: "alert-line", x1: ax, x2: ax, y1: ly + 2, y2: H - 26 }),
      el("text", { class: `alert-label ${sevClass(a.severity)}`, x: lx, y: ly }, a.rule_id),
      el("title", {}, `${a.severity} ${a.rule_id}: ${a.outcome}`)));
  }
  brush(svg, view, x, t0, t1, left, W, top, H);
  return svg;
}

// Drag across the chart to zoom into that window; "whole job" goes back.
function brush(svg, view, x, t0, t1, left, W, top, H) {
  let from = null, box = null;
  const tAt = (px) => t0 + ((px - left) / (W - left - 20)) * (t1 - t0);
  const pxOf = (ev) => ev.offsetX * (W / svg.getBoundingClientRect().width || 1);
  svg.addEventListener("mousedown", (ev) => {
    from = pxOf(ev);
    box = el("rect", { class: "brush", x: from, y: top, width: 1, height: H - 26 - top });
    svg.append(box);
  });
  svg.addEventListener("mousemove", (ev) => {
    if (from === null) return;
    const to = pxOf(ev);
    box.setAttribute("x", Math.min(from, to));
    box.setAttribute("width", Math.abs(to - from));
  });
  svg.addEventListener("mouseup", (ev) => {
    if (from === null) return;
    const to = pxOf(ev);
    if (Math.abs(to - from) > 4) {
      state.zoom = [tAt(Math.min(from, to)), tAt(Math.max(from, to))];
      renderJob(view);
    } else box.remove();
    from = null;
  });
}

function alertsTable(view) {
  if (!state.alerts.length) return el("p", { id: "no-alerts", class: "muted" }, "no alerts for this job");
  return el("table", { id: "alerts" }, el("tr", {}, ["time", "severity", "rule", "host", "process", "outcome", "matched", "evidence"].map((h) => el("th", {}, h))),
    state.alerts.map((a) => el("tr", { class: "alert", "data-rule": a.rule_id },
      el("td", {}, when(a.ts_ns)), el("td", {}, el("span", { class: `badge ${sevClass(a.severity)}` }, a.severity)),
      el("td", {}, a.rule_id, el("div", { class: "muted" }, a.description || "")), el("td", {}, a.host_id),
      el("td", {}, `${(a.process || {}).comm || ""} (${(a.process || {}).pid || ""})`), el("td", {}, a.outcome || ""),
      el("td", { class: "matched" }, Object.entries(a.matched || {}).map(([k, v]) => el("div", { "data-key": k }, el("b", {}, k), ": ", v))),
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
    el("span", { class: "muted argv" }, `${n.host_id} ${(n.argv || []).join(" ")}`),
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

function zoomBar(view) {
  if (!state.zoom) return el("p", { class: "muted" }, "drag across the chart to zoom into a window");
  return el("p", { id: "zoomed" }, `zoomed: ${when(state.zoom[0] * 1000)} to ${when(state.zoom[1] * 1000)} `,
    el("button", { id: "zoom-reset", onclick: () => { state.zoom = null; renderJob(view); } }, "whole job"));
}

function liveBar(view) {
  const box = el("input", { id: "live", type: "checkbox", checked: state.live });
  box.addEventListener("change", () => { state.live = box.checked; schedule(view); });
  return el("label", { class: "live" }, box, " live (pushed by the collector as they are stored)");
}

// Live: the collector pushes the job's new events and alerts (api/follow, JSON lines, the same reader token);
// they are merged in and the page redrawn at most once a second.
function schedule(view) {
  if (state.stream) { state.stream.abort(); state.stream = null; }
  if (!state.live) return;
  const ctl = new AbortController();
  state.stream = ctl;
  let pending = false;
  const redraw = () => {
    document.body.dataset.updated = String(Date.now());     // what arrived is in the state now
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; renderJob(view); }, 500);
  };
  (async () => {
    const res = await fetch(`api/follow?job=${encodeURIComponent(state.job)}`,
      { headers: { Authorization: "Bearer " + token() }, signal: ctl.signal });
    if (!res.ok || !res.body) return;
    const reader = res.body.getReader(), dec = new TextDecoder();
    const known = new Set(state.events.map((e) => `${e.host_id}|${e.event.seq}`));
    let buf = "";
    document.body.dataset.following = "1";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line || line === "{}") continue;
        const item = JSON.parse(line);
        if (item.event && !known.has(`${item.event.host_id}|${item.event.event.seq}`)) {
          known.add(`${item.event.host_id}|${item.event.event.seq}`);
          state.events.push(item.event);
          redraw();
        } else if (item.alert) {
          state.alerts = state.alerts.filter((a) => a.id !== item.alert.id).concat([item.alert])
            .sort((a, b) => us(a.ts_ns) - us(b.ts_ns));
          redraw();
        }
      }
    }
  })().catch(() => {});
}

function renderJob(view) {
  view.replaceChildren(el("h2", { id: "job-title" }, `Job ${state.job}`), filtersBar(view), liveBar(view), zoomBar(view),
    timelineSvg(view),
    el("h3", {}, "Alerts and blocks"), alertsTable(view), el("div", { class: "cols" }, treeList(), destinations()), eventsTable(view));
  document.body.dataset.ready = "job";
}

async function route() {
  const view = document.getElementById("view");
  if (!token()) return showLogin();
  try {
    const me = await api("whoami");
    document.getElementById("who").textContent = `${me.name} (${me.role})`;
    const m = location.hash.match(/^#\/job\/([^?&]+)/);
    if (m) await jobView(view, decodeURIComponent(m[1]));
    else { await jobsView(view); document.body.dataset.ready = "jobs"; }
  } catch (err) {
    view.replaceChildren(el("p", { id: "error" }, String(err.message || err)));
  }
}

window.addEventListener("hashchange", route);
route();
