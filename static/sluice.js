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

// A refused WHIP/WHEP request: the server's reason and its hint (retry after N ms, or do not
// reconnect), read from the JSON body or, failing that, Retry-After.
class Refused extends Error {
  constructor(status, text, retryAfter) {
    let reason = text.trim(), hint = null;
    try {
      const body = JSON.parse(text);
      reason = body.error || body.reason || reason;
      hint = body.hint || null;
    } catch (_) { /* a plain-text refusal */ }
    if (!hint && retryAfter) hint = { action: "retry", retryAfterMs: Number(retryAfter) * 1000 };
    super(`${status}: ${reason}`);
    this.hint = hint;
  }
}

// Sends the offer of `pc` to a WHIP or WHEP endpoint; returns the session resource and its
// status stream URL. Throws a Refused with the server's own reason and hint when refused.
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
  if (response.status !== 201) throw new Refused(response.status, text, response.headers.get("Retry-After"));
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

// Shows what the client will do next in #hint, following the server's hint.
function showHint(text, action) {
  const h = document.getElementById("hint");
  if (!h) return;
  h.textContent = text;
  h.dataset.action = action || "";
}

// Automatic retries in a row before the page waits for a click.
const MAX_RETRIES = 5;

// One publisher or player session with start/stop buttons; `setup(pc)` adds tracks or
// transceivers and returns what to release on stop. A server hint to retry starts the
// session again after the delay it gives; "do-not-reconnect" leaves it to the user.
function session({ kind, setup }) {
  let pc = null, resource = null, source = null, release = () => {};
  let retryTimer = null, retries = 0;
  const start = document.getElementById("start");
  const stop = document.getElementById("stop");

  function cancelRetry() {
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  }

  // Follows a hint after the session ended or was refused.
  function follow(hint) {
    cancelRetry();
    if (hint && hint.action === "retry" && retries < MAX_RETRIES) {
      const ms = Math.max(250, Number(hint.retryAfterMs) || 1000);
      retries += 1;
      showHint(`Reconnecting in ${Math.ceil(ms / 1000)} s (attempt ${retries} of ${MAX_RETRIES})…`, "retry");
      retryTimer = setTimeout(() => { retryTimer = null; begin(true); }, ms);
    } else if (hint && hint.action === "do-not-reconnect") {
      showHint("The server asked not to reconnect on our own. Press Resume to try again.", "do-not-reconnect");
    } else if (hint && hint.action === "retry") {
      showHint(`Gave up after ${MAX_RETRIES} attempts. Press Resume to try again.`, "gave-up");
    } else {
      showHint("", "");
    }
  }

  function teardown() {
    if (source) { source.close(); source = null; }
    if (pc) { pc.close(); pc = null; }
    release(); release = () => {};
    start.disabled = false;
    stop.disabled = true;
    start.textContent = "Start";
  }

  // Starts a session; `automatic` when following a retry hint (its failure then goes to the
  // hint line, and the status keeps the server's last word).
  async function begin(automatic) {
    cancelRetry();
    if (!automatic) retries = 0;
    start.disabled = true;
    start.textContent = "Start";
    const name = document.getElementById("name").value.trim();
    const app = document.getElementById("app").value.trim() || "defaultApp";
    if (!automatic) { showStatus("PENDING", ""); showHint("", ""); }
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
            follow(event.hint);
          } else if (event.status === "PUBLISHING" || event.status === "PLAYING") {
            retries = 0;
            showHint("", "");
          }
        });
        // The stream ends after the final status; do not let EventSource reconnect.
        source.onerror = () => { if (source && source.readyState !== EventSource.OPEN) { source.close(); source = null; } };
      }
    } catch (err) {
      teardown();
      start.textContent = "Resume";
      if (automatic) showHint(`Retry refused: ${err.message}`, "refused");
      else showStatus("FAILED", err.message);
      follow(err.hint);
      if (automatic && !(err.hint && err.hint.action === "retry")) {
        showHint(`Retry refused: ${err.message}. Press Resume to try again.`, "refused");
      }
    }
  }

  start.onclick = () => begin(false);

  stop.onclick = async () => {
    cancelRetry();
    showHint("", "");
    const target = resource;
    resource = null;
    if (target) {
      try { await fetch(target, { method: "DELETE" }); } catch (_) { /* the server may be gone */ }
    }
    teardown();
    showStatus(kind === "whip" ? "UNPUBLISHED" : "STOPPED", "");
  };
}
