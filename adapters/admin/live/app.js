// The live page: reads the admin listener's feed (Server-Sent Events, one
// ListPeersResponse as protojson per second) and draws the peers and a
// chart of events delivered and received per second. No other requests,
// no outside files.
"use strict";

const HISTORY = 120; // chart points: two minutes at one per second
const samples = [];  // {t, delivered, received}: totals over all peers
let previous = new Map(); // server ID -> row text, to mark changed rows

// With --admin-token the page is opened as /live/#token=...: trade the
// token for the feed's cookie, then drop it from the address.
async function authenticate() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    await fetch("session", { method: "POST", headers: { Authorization: "Bearer " + token }, credentials: "same-origin" });
    history.replaceState(null, "", location.pathname);
  }
  const res = await fetch("session", { credentials: "same-origin" });
  return res.ok;
}

function num(v) { return Number(v || 0); } // protojson writes 64-bit numbers as strings

function age(fromISO, nowMs) {
  if (!fromISO) return "-";
  let s = Math.max(0, Math.round((nowMs - Date.parse(fromISO)) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  s = s % 60;
  return (h ? h + "h" : "") + (h || m ? m + "m" : "") + s + "s";
}

function cell(tr, cls, text, title) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = text;
  if (title) td.title = title;
  tr.appendChild(td);
}

function render(msg, nowMs) {
  const peers = msg.peers || [];
  const body = document.querySelector("#peers tbody");
  const rows = document.createDocumentFragment();
  const seen = new Map();
  for (const p of peers) {
    const tr = document.createElement("tr");
    const mode = (p.mode || "MODE_PUSH").replace("MODE_", "").toLowerCase();
    tr.dataset.serverId = p.serverId;
    tr.className = mode;
    const delivered = num(p.delivered) - num(p.skipped);
    let error = p.lastError || "";
    if (p.stuck) error = "STUCK at event " + p.stuck.seq + ": " + p.stuck.reason + (error ? " · " + error : "");
    cell(tr, "server", p.serverId);
    cell(tr, "peer", p.peerId);
    cell(tr, "mode", mode);
    cell(tr, "num head", String(num(p.head)));
    cell(tr, "num delivered", String(delivered), num(p.skipped) ? num(p.skipped) + " skipped" : "");
    cell(tr, "num pending", String(num(p.pending)));
    cell(tr, "num age", num(p.pending) ? age(p.oldestPending, nowMs) : "-", p.oldestPending || "");
    cell(tr, "num received", String(num(p.eventsReceived)));
    cell(tr, "error", error || "-");
    const key = [mode, p.head, delivered, p.pending, p.eventsReceived, error].join("|");
    if (previous.has(p.serverId) && previous.get(p.serverId) !== key) tr.classList.add("changed");
    seen.set(p.serverId, key);
    rows.appendChild(tr);
  }
  previous = seen;
  body.replaceChildren(rows);
  document.getElementById("empty").hidden = peers.length > 0;
  document.getElementById("count").textContent = peers.length ? "(" + peers.length + ")" : "";

  let delivered = 0, received = 0;
  for (const p of peers) { delivered += num(p.delivered) - num(p.skipped); received += num(p.eventsReceived); }
  samples.push({ t: nowMs, delivered, received });
  while (samples.length > HISTORY + 1) samples.shift();
  draw();
}

function rates() {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    out.push({ delivered: Math.max(0, (b.delivered - a.delivered) / dt), received: Math.max(0, (b.received - a.received) / dt) });
  }
  return out;
}

function draw() {
  const canvas = document.getElementById("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const r = rates();
  const top = Math.max(1, ...r.map((x) => Math.max(x.delivered, x.received)));
  const pad = { l: 44, r: 8, t: 10, b: 18 };
  const x = (i) => pad.l + (w - pad.l - pad.r) * (i + HISTORY - r.length) / (HISTORY - 1);
  const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / top;
  g.strokeStyle = css.getPropertyValue("--line");
  g.fillStyle = css.getPropertyValue("--muted");
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const v of [0, top / 2, top]) {
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v >= 100 ? Math.round(v) : v.toFixed(1).replace(/\.0$/, ""), 4, y(v) + 4);
  }
  g.fillText("2 min ago", pad.l, h - 4);
  g.fillText("now", w - pad.r - 22, h - 4);
  for (const series of ["delivered", "received"]) {
    g.strokeStyle = css.getPropertyValue("--" + series);
    g.lineWidth = 2;
    g.beginPath();
    r.forEach((p, i) => (i ? g.lineTo(x(i), y(p[series])) : g.moveTo(x(i), y(p[series]))));
    g.stroke();
  }
}

function status(text, cls) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = "status " + cls;
}

async function main() {
  if (!(await authenticate())) {
    document.getElementById("auth").hidden = false;
    status("not authorized", "down");
    return;
  }
  const feed = new EventSource("feed");
  feed.addEventListener("peers", (e) => {
    const nowMs = Number(e.lastEventId) || Date.now();
    render(JSON.parse(e.data), nowMs);
    status("live · updated " + new Date(nowMs).toLocaleTimeString(), "live");
  });
  feed.addEventListener("failed", (e) => status("the server could not list the peers: " + JSON.parse(e.data), "down"));
  feed.onerror = () => status("disconnected; reconnecting…", "down");
  window.addEventListener("resize", draw);
}

main();
