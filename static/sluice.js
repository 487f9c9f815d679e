// Sluice example client: WHIP/WHEP signalling and the session status stream.
// Plain browser JavaScript, no build step. Used by publish.html and play.html.
"use strict";

const FINAL = new Set(["UNPUBLISHED", "STOPPED", "FAILED"]);

// Waits until ICE gathering is complete (non-trickle WHIP/WHEP), at most `ms`.
function gatheringComplete(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Sends the offer of `pc` to a WHIP or WHEP endpoint; returns the session resource and its
// status stream URL. Throws an Error with the server's own text when refused.
async function negotiate(pc, endpoint) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await gatheringComplete(pc, 2000);
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp,
  });
  const text = await response.text();
  if (response.status !== 201) throw new Error(`${response.status}: ${text.trim()}`);
  await pc.setRemoteDescription({ type: "answer", sdp: text });
  const location = new URL(response.headers.get("Location"), endpoint).href;
  const link = response.headers.get("Link") || "";
  const match = link.match(/<([^>]+)>\s*;\s*rel="urn:ietf:params:whep:ext:core:server-sent-events"/);
  const events = match ? new URL(match[1], endpoint).href : null;
  return { location, events };
}

// Shows the status and its reason in #status ("FAILED — Stopped by server: …"); the bare
// status is in its data-status attribute, for styling and for tests.
function showStatus(status, info) {
  const s = document.getElementById("status");
  s.textContent = info ? `${status} — ${info}` : status;
  s.dataset.status = status;
}

// One publisher or player session with start/stop buttons; `setup(pc)` adds tracks or
// transceivers and returns what to release on stop.
function session({ kind, setup }) {
  let pc = null, resource = null, source = null, release = () => {};
  const start = document.getElementById("start");
  const stop = document.getElementById("stop");

  function teardown() {
    if (source) { source.close(); source = null; }
    if (pc) { pc.close(); pc = null; }
    release(); release = () => {};
    start.disabled = false;
    stop.disabled = true;
    start.textContent = "Start";
  }

  start.onclick = async () => {
    start.disabled = true;
    start.textContent = "Start";
    const name = document.getElementById("name").value.trim();
    const app = document.getElementById("app").value.trim() || "defaultApp";
    showStatus("PENDING", "");
    try {
      pc = new RTCPeerConnection();
      release = await setup(pc);
      const endpoint = new URL(`/${kind}/${encodeURIComponent(name)}?app=${encodeURIComponent(app)}`, location.href).href;
      const session = await negotiate(pc, endpoint);
      resource = session.location;
      stop.disabled = false;
      if (session.events) {
        source = new EventSource(session.events);
        source.addEventListener("status", (e) => {
          const event = JSON.parse(e.data);
          showStatus(event.status, event.info);
          if (FINAL.has(event.status)) {
            resource = null;
            teardown();
            start.textContent = "Resume";
          }
        });
        // The stream ends after the final status; do not let EventSource reconnect.
        source.onerror = () => { if (source && source.readyState !== EventSource.OPEN) { source.close(); source = null; } };
      }
    } catch (err) {
      showStatus("FAILED", err.message);
      teardown();
    }
  };

  stop.onclick = async () => {
    const target = resource;
    resource = null;
    if (target) {
      try { await fetch(target, { method: "DELETE" }); } catch (_) { /* the server may be gone */ }
    }
    teardown();
    showStatus(kind === "whip" ? "UNPUBLISHED" : "STOPPED", "");
  };
}
