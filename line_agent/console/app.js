// Console shell: login, role-based visibility, tabs, the live line view.
import { api, apiBlob, auth, esc, fmtNum, fmtTime, stream } from "./api.js";
import { drawDetections } from "./draw.js";
import { initAgent, initControl, initModels, initReview, initTelemetry, showTab } from "./views.js";

const $ = (id) => document.getElementById(id);
export const session = { me: null, line: "", stopStream: null };

function applyRole(me) {
  $("who-name").textContent = me.name;
  $("who-role").textContent = me.role;
  $("who-role").className = `role role-${me.role}`;
  for (const el of document.querySelectorAll("[data-need]")) {
    el.hidden = !me.can[el.dataset.need];
  }
  const anyCmd = Object.entries(me.can).some(([k, v]) => k.startsWith("command:") && v);
  $("cmd-none").hidden = anyCmd;
  const sel = $("line-select");
  sel.replaceChildren(...me.lines.map((l) => new Option(l, l)));
  session.line = me.lines[0];
}

async function login(token) {
  const r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }) });
  if (!r.ok) throw new Error(r.status === 401 ? "Unknown or revoked token." : `Login failed (HTTP ${r.status}).`);
  return r.json();
}

async function start(me) {
  session.me = me;
  applyRole(me);
  $("login").hidden = true;
  $("main").hidden = false;
  document.body.classList.add("signed-in");
  initReview(session);
  initTelemetry(session);
  initAgent(session);
  initControl(session);
  initModels(session);
  startLive();
  showTab(location.hash.slice(1) || "live");
}

function showLogin(msg = "") {
  if (session.stopStream) session.stopStream();
  session.stopStream = null;
  $("main").hidden = true;
  $("login").hidden = false;
  document.body.classList.remove("signed-in");
  $("login-error").textContent = msg;
  $("login-token").focus();
}

// ---- live view ------------------------------------------------------------------------------------
const live = { frames: {}, camera: "", loading: false, pending: null, recent: [], times: [], counters: null };

let lineState = {};
function setState(update) {
  // Events and polls may carry different subsets of fields: keep the last known value of each.
  if (update.line !== lineState.line) lineState = {};
  for (const [k, v] of Object.entries(update)) if (v !== undefined) lineState[k] = v;
  if (update.state === "unknown") lineState.reason = update.reason || lineState.reason;
  else if (update.reason !== undefined) lineState.reason = update.reason;
  const st = lineState;
  const pill = $("state-pill");
  const s = st.state || "unknown";
  pill.textContent = s.toUpperCase() + (s === "running" && st.speed_pct ? ` · ${fmtNum(st.speed_pct, 0)}%` : "");
  pill.className = `pill ${s}`;
  pill.title = st.reason || "Line state from the PLC";
  const rows = [
    ["State", s], ["E-stop", st.estop === null || st.estop === undefined ? "–" : st.estop ? "ACTIVE" : "clear"],
    ["Guard door", st.guard_door === null || st.guard_door === undefined ? "–" : st.guard_door ? "OPEN" : "closed"],
    ["Speed", st.speed_pct === null || st.speed_pct === undefined ? "–" : `${fmtNum(st.speed_pct, 0)} %`],
    ["Reject count (PLC)", st.reject_count ?? "–"],
  ];
  if (st.reason) rows.push(["Note", st.reason]);
  $("line-details").innerHTML = rows.map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd class="${v === "ACTIVE" || v === "OPEN" ? "alarm" : ""}">${esc(v)}</dd>`).join("");
}

function setCounters(c) {
  live.counters = c;
  $("c-pass").textContent = fmtNum(c.pass ?? 0, 0);
  $("c-reject").textContent = fmtNum(c.reject ?? 0, 0);
  $("c-rework").textContent = fmtNum(c.rework ?? 0, 0);
  if (c.throughput_ppm !== undefined) $("c-tput").textContent = fmtNum(c.throughput_ppm, 1);
}

function onInspection(d, fromStore = false) {
  live.recent.unshift(d);
  live.recent = live.recent.slice(0, 12);
  const now = Date.now();
  if (!fromStore) live.times.push(now);
  live.times = live.times.filter((t) => now - t < 60000);
  if (!fromStore && (!live.counters || live.counters.throughput_ppm === undefined)) {
    $("c-tput").textContent = fmtNum(live.times.length, 0);
  }
  $("recent").innerHTML = live.recent.map((r) => {
    const dec = r.decision || "pass";
    const cls = (r.defects || []).map((x) => x.cls).join(", ");
    return `<li><span class="dot ${esc(dec)}"></span><b>${esc(r.part_id || r.inspection_id)}</b>
      <span class="badge ${esc(dec)}">${esc(dec)}</span> <span class="muted cls" title="${esc(cls)}">${esc(cls)}</span>
      <span class="muted t">${esc(fmtTime(r.ts))}</span></li>`;
  }).join("");
}

function onFrame(d) {
  live.frames[d.camera] = d;
  const sel = $("camera-select");
  if (![...sel.options].some((o) => o.value === d.camera)) sel.append(new Option(d.camera, d.camera));
  if (!live.camera) { live.camera = d.camera; sel.value = d.camera; }
  if (d.camera === live.camera) loadFrame(d);
}

async function loadFrame(meta) {
  if (live.loading) { live.pending = meta; return; }  // keep only the newest while one is loading
  live.loading = true;
  try {
    const line = meta.line ? `?line=${encodeURIComponent(meta.line)}` : "";
    const blob = await apiBlob(`/api/live/frame/${encodeURIComponent(meta.camera)}${line}`);
    const bmp = await createImageBitmap(blob);
    drawDetections($("live-canvas"), bmp, meta.boxes || [], meta.decision);
    $("frame-meta").textContent = `${meta.inspection_id || ""} · ${fmtTime(meta.ts)}`;
  } catch (e) {
    $("frame-meta").textContent = `frame unavailable (${e.message})`;
  } finally {
    live.loading = false;
    if (live.pending) { const p = live.pending; live.pending = null; loadFrame(p); }
  }
}

async function prefillRecent() {
  // The stream only carries what happens from now on: start the list from the store.
  try {
    const page = await api(`/api/inspections?line=${encodeURIComponent(session.line)}&limit=12`);
    live.recent = [];
    for (const it of page.items.reverse()) {
      onInspection({ ...it, decision: it.override || it.decision, ts: it.ts,
        defects: it.classes.map((c) => ({ cls: c })) }, true);
    }
  } catch { /* the live events fill it */ }
}

function startLive() {
  prefillRecent();
  if (session.stopStream) session.stopStream();
  session.stopStream = stream("/api/live/events", (kind, d) => {
    if (d.line && d.line !== session.line && kind !== "frame") return;
    if (kind === "counters") setCounters(d);
    else if (kind === "line_state") setState(d);
    else if (kind === "inspection") onInspection(d);
    else if (kind === "frame") onFrame(d);
  }, (ok) => document.body.classList.toggle("offline", !ok));
  pollState();
}

async function pollState() {
  // The PLC state is also polled: a runtime that publishes nothing still shows running / stopped / unknown.
  if (!session.me) return;
  try { setState(await api(`/api/line/state?line=${encodeURIComponent(session.line)}`)); } catch { /* shown as is */ }
  clearTimeout(session.stateTimer);
  session.stateTimer = setTimeout(pollState, 3000);
}
export { pollState };

// ---- boot -----------------------------------------------------------------------------------------
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("login-token").value.trim();
  try {
    const me = await login(token);
    auth.token = token;
    $("login-token").value = "";
    await start(me);
  } catch (e) {
    showLogin(e.message);
  }
});
$("logout").addEventListener("click", () => { auth.token = ""; session.me = null; location.hash = ""; showLogin(); });
window.addEventListener("lineguard:unauthorized", () => { auth.token = ""; session.me = null; showLogin("Session expired: sign in again."); });
$("camera-select").addEventListener("change", (e) => { live.camera = e.target.value; const f = live.frames[live.camera]; if (f) loadFrame(f); });
$("line-select").addEventListener("change", (e) => { session.line = e.target.value; pollState(); });
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

(async () => {
  if (auth.token) {
    try { await start(await login(auth.token)); return; } catch { auth.token = ""; }
  }
  showLogin();
})();
