// Sluice operator page: lists live streams, holds and terminations from /rest-api/ and
// stops or releases with one click. Plain browser JavaScript, no build step.
"use strict";

const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("sluice-token") || "";
tokenInput.onchange = () => { sessionStorage.setItem("sluice-token", tokenInput.value.trim()); refresh(); };

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = tokenInput.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const answer = await response.json().catch(() => null);
  if (response.status === 404) return [];
  if (!response.ok) throw new Error(`${path}: ${response.status} ${answer && answer.error ? answer.error : ""}`);
  return answer;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function button(row, label, onclick) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.textContent = label;
  b.onclick = onclick;
  td.appendChild(b);
  row.appendChild(td);
}

function time(ms) { return new Date(ms).toLocaleTimeString(); }

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

async function stopStream(stream) {
  const body = { mediaSessionId: stream.mediaSessionId, reason: document.getElementById("reason").value.trim() };
  const hold = Number(document.getElementById("hold").value);
  if (hold > 0) body.holdMs = Math.round(hold * 1000);
  await api("/rest-api/stream/terminate", body);
  refresh();
}

async function refresh() {
  try {
    const [streams, holds, terminations] = await Promise.all([
      api("/rest-api/stream/find_all"),
      api("/rest-api/stream/holds"),
      api("/rest-api/stream/terminations"),
    ]);
    document.getElementById("stream-count").textContent = streams.length;
    fill("streams", streams.map((s) => {
      const row = document.createElement("tr");
      row.dataset.id = s.mediaSessionId;
      cell(row, s.name); cell(row, s.appKey); cell(row, s.published ? "publisher" : "player");
      cell(row, s.status).className = `status-${s.status}`;
      cell(row, time(s.createdDate)); cell(row, s.remoteAddress);
      button(row, "Stop", () => stopStream(s).catch(show));
      return row;
    }));
    document.getElementById("hold-count").textContent = holds.length;
    fill("holds", holds.map((h) => {
      const row = document.createElement("tr");
      const f = h.filter;
      const what = f.streams ? f.streams.map((s) => `${s.name} (${s.published ? "publish" : "play"}, ${s.appKey})`).join(", ")
        : [f.name, f.published === undefined ? null : (f.published ? "publish" : "play"), f.appKey].filter((x) => x !== null && x !== undefined).join(", ");
      cell(row, what || "everything"); cell(row, h.reason); cell(row, `${Math.ceil(h.remainingMs / 1000)} s`);
      button(row, "Release", () => api("/rest-api/stream/release", { holdId: h.holdId }).then(refresh).catch(show));
      return row;
    }));
    fill("terminations", terminations.slice().reverse().slice(0, 50).map((t) => {
      const row = document.createElement("tr");
      const by = t.source.kind === "rest" ? `REST from ${t.source.remoteAddress}`
        : t.source.kind === "keepAlive" ? `keep-alive (${t.source.by}, ${t.source.appKey})` : "server";
      cell(row, time(t.time)); cell(row, by); cell(row, t.reason || "(no reason)");
      cell(row, t.streams.map((s) => `${s.name} (${s.published ? "publisher" : "player"})`).join(", "));
      return row;
    }));
    show(null);
  } catch (err) {
    show(err);
  }
}

function show(err) {
  const e = document.getElementById("error");
  e.textContent = err ? err.message : "";
}

refresh();
setInterval(refresh, 2000);
