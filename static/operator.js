// Sluice operator console: one server-sent-events feed (/rest-api/console/feed, read with
// fetch so that the bearer token goes in a header) drawn as cards, tables and uPlot
// sparklines; previews play over WHEP; stops, holds, dry runs and releases go to
// /rest-api/. Plain browser JavaScript, no build step.
"use strict";

const HISTORY = 180; // samples kept per series: three minutes at one a second
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("sluice-token") || "";
tokenInput.onchange = () => { sessionStorage.setItem("sluice-token", tokenInput.value.trim()); restartFeed(); };

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = tokenInput.value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function api(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body || {}) });
  const answer = await response.json().catch(() => null);
  if (response.status === 404) return [];
  if (!response.ok) throw new Error(`${path}: ${response.status} ${answer && answer.error ? answer.error : ""}`);
  return answer;
}

function show(err) { document.getElementById("error").textContent = err ? err.message : ""; }
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const kbit = (bps) => (bps / 1000).toFixed(0);
const time = (ms) => new Date(ms).toLocaleTimeString();

// Sparklines: a uPlot per series set, fed from a rolling history.
function sparkline(container, colours) {
  const plot = new uPlot({
    width: container.clientWidth || 120, height: 32, class: "sparkline",
    cursor: { show: false }, legend: { show: false }, select: { show: false },
    scales: { x: { time: false } },
    axes: [{ show: false }, { show: false }],
    series: [{}, ...colours.map((stroke) => ({ stroke, width: 1.5, points: { show: false } }))],
  }, [[], ...colours.map(() => [])], container);
  return { plot, data: [[], ...colours.map(() => [])] };
}
function push(spark, at, values) {
  spark.data[0].push(at / 1000);
  values.forEach((v, i) => spark.data[i + 1].push(v));
  if (spark.data[0].length > HISTORY) spark.data.forEach((series) => series.shift());
  spark.plot.setData(spark.data);
}

const serverSparks = {
  cpu: sparkline(document.getElementById("spark-cpu"), ["#a40"]),
  bitrate: sparkline(document.getElementById("spark-bitrate"), ["#070", "#06c"]),
};
const rows = new Map(); // mediaSessionId -> {row, cells, sparkIn, stream}
let lastSnapshot = null;

function streamRow(s) {
  const row = el("tr");
  row.dataset.id = s.mediaSessionId;
  const cells = {};
  for (const key of ["name", "app", "kind", "status", "players", "in", "out", "loss", "keepalive", "hold"]) {
    cells[key] = el("td");
    row.appendChild(cells[key]);
  }
  cells.name.textContent = s.name;
  cells.app.textContent = s.appKey;
  cells.kind.textContent = s.published ? "publisher" : "player";
  const actions = el("td", undefined, "actions");
  const buttons = [["Preview", () => preview(s)], ["Stop", () => stop(s, 0)], ["Stop + hold", () => stop(s, Number(document.getElementById("hold").value))]];
  for (const [label, onclick] of buttons) {
    if (label === "Preview" && !s.published) continue;
    const b = el("button", label);
    b.dataset.action = label;
    b.onclick = () => onclick().catch(show);
    actions.appendChild(b);
  }
  row.appendChild(actions);
  const entry = { row, cells, stream: s, sparkIn: null };
  if (s.published) {
    const box = el("div", undefined, "spark");
    cells.in.appendChild(el("span"));
    cells.in.appendChild(box);
    entry.box = box;
  }
  return entry;
}

function updateRow(entry, s, at) {
  const c = entry.cells;
  c.status.textContent = s.status;
  c.status.className = `status-${s.status}`;
  c.players.textContent = s.published ? s.players : "";
  if (s.published) {
    if (!entry.sparkIn && entry.box.isConnected) entry.sparkIn = sparkline(entry.box, ["#070", "#06c"]);
    c.in.firstChild.textContent = kbit(s.bitrateIn || 0);
    c.out.textContent = kbit(s.bitrateOut || 0);
    c.loss.textContent = `${s.packetsLost || 0} / ${s.packetsDropped || 0}`;
    if (entry.sparkIn) push(entry.sparkIn, at, [s.bitrateIn || 0, s.bitrateOut || 0]);
  }
  const k = s.keepAlive;
  c.keepalive.textContent = !s.keepAliveOn ? "off"
    : k ? `${k.code} ${k.outcome}${k.reason ? ": " + k.reason : ""} (${k.source}) at ${time(k.at)}, next ${time(s.keepAliveNextDue)}`
    : "due within the interval";
  c.hold.textContent = s.held ? "held" : "";
}

function render(snap) {
  lastSnapshot = snap;
  const at = snap.at;
  document.getElementById("node").textContent = `node ${snap.nodeId}`;
  const sv = snap.server;
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  set("s-streams", sv.streams); set("s-publishers", sv.publishers); set("s-players", sv.players);
  set("s-connections", sv.signallingConnections); set("s-cpu", sv.cpuPercent.toFixed(1));
  set("s-rss", (sv.rssBytes / 1048576).toFixed(0)); set("s-fds", sv.openFds);
  set("s-bitrate", `${kbit(sv.bitrateIn)} / ${kbit(sv.bitrateOut)}`);
  push(serverSparks.cpu, at, [sv.cpuPercent]);
  push(serverSparks.bitrate, at, [sv.bitrateIn, sv.bitrateOut]);

  // With a cluster, a row per live node, from its entry in Redis.
  document.getElementById("nodes-panel").hidden = !snap.cluster;
  if (snap.cluster) {
    const nodes = snap.cluster.nodes;
    set("node-count", nodes.length);
    set("nodes-error", snap.cluster.error || "");
    document.querySelector("#nodes tbody").replaceChildren(...nodes.map((n) => {
      const row = el("tr");
      row.dataset.node = n.nodeId;
      if (n.nodeId === snap.nodeId) row.className = "this-node";
      for (const text of [n.nodeId === snap.nodeId ? `${n.nodeId} (this one)` : n.nodeId, n.httpUrl || "", n.streams,
        `${n.publishers || 0} / ${n.players || 0}`, (n.cpuPercent || 0).toFixed(1),
        ((n.rssBytes || 0) / 1048576).toFixed(0), n.openFds || 0,
        `${Math.max(0, ((at - n.refreshedAt) / 1000)).toFixed(1)} s ago`]) row.appendChild(el("td", String(text)));
      return row;
    }));
  }

  const body = document.querySelector("#streams tbody");
  const seen = new Set();
  for (const s of snap.streams) {
    seen.add(s.mediaSessionId);
    let entry = rows.get(s.mediaSessionId);
    if (!entry) {
      entry = streamRow(s);
      rows.set(s.mediaSessionId, entry);
    }
    // In the feed's order (by name, publisher first); moving a row keeps its chart.
    body.appendChild(entry.row);
    updateRow(entry, s, at);
  }
  for (const [id, entry] of rows) {
    if (!seen.has(id)) { entry.row.remove(); if (entry.sparkIn) entry.sparkIn.plot.destroy(); rows.delete(id); }
  }
  set("stream-count", snap.streams.length);

  document.querySelector("#apps tbody").replaceChildren(...snap.apps.map((a) => {
    const row = el("tr");
    const b = a.hooks.breaker;
    const p = a.plugin;
    const h = a.hooks;
    for (const text of [a.appKey, a.streams, `${h.calls} (${h.recentCalls})`, `${h.failures} (${h.recentFailures})`,
      `${h.recentLatencyMs.toFixed(1)} / ${h.meanLatencyMs.toFixed(1)} ms`,
      b ? `${b.state}${b.consecutiveFailures ? ` (${b.consecutiveFailures} failing)` : ""}` : "closed",
      p ? `v${p.version}${p.loaded ? "" : " (not loaded)"}, ${p.errors} errors${p.lastError ? ": " + p.lastError : ""}` : "none",
      a.keepAlivePerSecond]) row.appendChild(el("td", String(text)));
    if ((b && b.state !== "closed") || h.recentFailures > 0) row.className = "alarm";
    return row;
  }));

  set("hold-count", snap.holds.length);
  document.querySelector("#holds tbody").replaceChildren(...snap.holds.map((h) => {
    const row = el("tr");
    const f = h.filter;
    const what = f.streams ? f.streams.map((s) => `${s.name} (${s.published ? "publish" : "play"}, ${s.appKey})`).join(", ")
      : [f.name, f.published === undefined ? null : (f.published ? "publish" : "play"), f.appKey].filter((x) => x !== null && x !== undefined).join(", ");
    row.appendChild(el("td", what || "everything"));
    row.appendChild(el("td", h.reason));
    row.appendChild(el("td", `${Math.max(0, Math.ceil((h.until - at) / 1000))} s`));
    const td = el("td");
    const release = el("button", "Release");
    release.onclick = () => api("/rest-api/stream/release", { holdId: h.holdId }).catch(show);
    td.appendChild(release);
    row.appendChild(td);
    return row;
  }));

  document.querySelector("#terminations tbody").replaceChildren(...snap.terminations.map((t) => {
    const row = el("tr");
    const by = t.source.kind === "rest" ? `REST from ${t.source.remoteAddress}`
      : t.source.kind === "keepAlive" ? `keep-alive (${t.source.by}, ${t.source.appKey})` : "server";
    row.appendChild(el("td", time(t.time)));
    row.appendChild(el("td", by));
    row.appendChild(el("td", t.reason || "(no reason)"));
    row.appendChild(el("td", t.streams.map((s) => `${s.name} (${s.published ? "publisher" : "player"})`).join(", ")));
    return row;
  }));
}

// The feed: server-sent events read from a fetch body (EventSource cannot send the token).
let feedAbort = null;
async function runFeed() {
  const state = document.getElementById("feed-state");
  feedAbort = new AbortController();
  try {
    const response = await fetch("/rest-api/console/feed", { headers: headers(), signal: feedAbort.signal });
    if (!response.ok) throw new Error(`/rest-api/console/feed: ${response.status}`);
    state.textContent = "live"; state.className = "badge live";
    show(null);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (block.includes("event: snapshot") && data) render(JSON.parse(data));
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    show(err);
  }
  state.textContent = "reconnecting…"; state.className = "badge";
  setTimeout(runFeed, 1000);
}
function restartFeed() { if (feedAbort) feedAbort.abort(); runFeed(); }

async function stop(s, holdSeconds) {
  const body = { mediaSessionId: s.mediaSessionId, reason: document.getElementById("reason").value.trim() };
  if (holdSeconds > 0) body.holdMs = Math.round(holdSeconds * 1000);
  await api("/rest-api/stream/terminate", body);
}

// Stop by filter, after a dry run that lists what it would stop.
function filter() {
  const body = {};
  const name = document.getElementById("f-name").value.trim();
  const app = document.getElementById("f-app").value.trim();
  const kind = document.getElementById("f-kind").value;
  if (name) body.name = name;
  if (app) body.appKey = app;
  if (kind) body.published = kind === "true";
  return body;
}
document.getElementById("dry-run").onclick = async () => {
  const out = document.getElementById("dry-result");
  const stopButton = document.getElementById("stop-filter");
  try {
    const answer = await api("/rest-api/stream/terminate", Object.assign(filter(), { dryRun: true }));
    const streams = Array.isArray(answer) ? [] : answer.streams;
    out.textContent = streams.length
      ? `Would stop ${streams.length}: ${streams.map((s) => `${s.name} (${s.published ? "publisher" : "player"})`).join(", ")}`
      : "Would stop nothing.";
    out.dataset.count = streams.length;
    stopButton.disabled = streams.length === 0;
    show(null);
  } catch (err) { show(err); stopButton.disabled = true; }
};
document.getElementById("stop-filter").onclick = async () => {
  try {
    const body = Object.assign(filter(), { reason: document.getElementById("reason").value.trim() });
    const answer = await api("/rest-api/stream/terminate", body);
    document.getElementById("dry-result").textContent = `Stopped ${(answer.mediaSessionIds || []).length}.`;
    document.getElementById("stop-filter").disabled = true;
  } catch (err) { show(err); }
};

// A preview is a WHEP player like any other: it counts, and policies apply to it.
let previewSession = null;
async function preview(s) {
  await closePreview();
  const panel = document.getElementById("preview-panel");
  panel.hidden = false;
  document.getElementById("preview-name").textContent = s.name;
  const state = document.getElementById("preview-state");
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (e) => { document.getElementById("preview").srcObject = e.streams[0]; };
  pc.onconnectionstatechange = () => { state.textContent = pc.connectionState; };
  previewSession = { pc, location: null };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    setTimeout(done, 2000);
  });
  const url = `/whep/${encodeURIComponent(s.name)}?app=${encodeURIComponent(s.appKey)}`;
  const answer = await fetch(url, { method: "POST", headers: headers({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp });
  if (answer.status !== 201) { state.textContent = `refused: ${answer.status} ${await answer.text()}`; return; }
  previewSession.location = answer.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
}
async function closePreview() {
  const session = previewSession;
  previewSession = null;
  document.getElementById("preview-panel").hidden = true;
  document.getElementById("preview").srcObject = null;
  if (!session) return;
  if (session.location) await fetch(session.location, { method: "DELETE" }).catch(() => {});
  session.pc.close();
}
document.getElementById("preview-close").onclick = () => closePreview().catch(show);

runFeed();
