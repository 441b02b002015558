// Console shell: login, role-based visibility, tabs, polling and staleness, the header, the live line view.
import { api, apiBlob, atLeast, auth, esc, fmtClock, fmtNum, fmtTime, link, stream } from "./api.js";
import { applyAlarmChange, applyAlarmPage, initAlarms, loadAlarms } from "./alarms.js";
import { initAudit } from "./audit.js";
import { drawDetections } from "./draw.js";
import { initOverview } from "./overview.js";
import { initPeople } from "./people.js";
import { STALE_MS, changed, lineStore, onChange, session, store } from "./state.js";
import { causeText, commandAllowed, sendCommand, speedText } from "./ui.js";
import { initAgent, initControl, initModels, initReview, initTelemetry, showTab } from "./views.js";

const $ = (id) => document.getElementById(id);
export { session };

function applyRole(me) {
  $("who-name").textContent = me.name;
  $("who-role").textContent = me.role;
  const scope = $("who-lines");
  scope.hidden = me.all_lines !== false;
  scope.textContent = me.all_lines === false ? `only ${me.lines.join(", ") || "no line of this server"}` : "";
  scope.title = me.all_lines === false ? "This token may see and act on these lines only" : "";
  $("who-role").className = `role role-${me.role}`;
  for (const el of document.querySelectorAll("[data-need]")) el.hidden = !me.can[el.dataset.need];
  for (const el of document.querySelectorAll("[data-role]")) el.hidden = !atLeast(me, el.dataset.role);
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
  const me = await r.json();
  // A token limited to lines this server does not run can see nothing here: say so rather than show empty views.
  if (!me.lines.length) throw new Error("This token is limited to lines this server does not run.");
  return me;
}

async function start(me) {
  session.me = me;
  applyRole(me);
  $("login").hidden = true;
  $("main").hidden = false;
  document.body.classList.add("signed-in");
  link.lastContact = Date.now();
  initOverview(session);
  initAlarms(session);
  initReview(session);
  initTelemetry(session);
  initAgent(session);
  initControl(session);
  initAudit(session);
  initPeople(session);
  initModels(session);
  startLive();
  startPolling();
  showTab(location.hash.slice(1) || "overview");
}

function showLogin(msg = "") {
  if (session.stopStream) session.stopStream();
  session.stopStream = null;
  session.streamUp = false;
  stopPolling();
  $("main").hidden = true;
  $("login").hidden = false;
  $("stale-banner").hidden = true;
  document.body.classList.remove("signed-in", "stale");
  $("login-error").textContent = msg;
  $("login-token").focus();
}

// ---- polling and staleness ------------------------------------------------------------------------
const timers = [];
function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}
function stopPolling() {
  while (timers.length) clearInterval(timers.pop());
}

async function pollStates() {
  if (!session.me) return;
  await Promise.all(session.me.lines.map(async (line) => {
    try {
      const st = await api(`/api/line/state?line=${encodeURIComponent(line)}`);
      const ls = lineStore(line);
      ls.state = mergeState(ls.state, st);
      ls.stateAt = Date.now();
    } catch { /* the line goes stale */ }
  }));
  changed("state");
}

function mergeState(old, update) {
  // Events and polls carry different subsets of fields: keep the last known value of each.
  const out = { ...(old || {}) };
  for (const [k, v] of Object.entries(update)) if (v !== undefined) out[k] = v;
  return out;
}

async function pollRates() {
  if (!session.me) return;
  await Promise.all(session.me.lines.map(async (line) => {
    const ls = lineStore(line);
    try {
      if (!ls.targets || Date.now() - (ls.targetsAt || 0) > 60000) {
        ls.targets = await api(`/api/targets?line=${encodeURIComponent(line)}`);
        ls.targetsAt = Date.now();
      }
      const win = ls.targets.reject_window_min;
      const since = new Date(Date.now() - win * 60000).toISOString();
      const q = `line=${encodeURIComponent(line)}&since=${encodeURIComponent(since)}&limit=1`;
      const [all, rej] = await Promise.all([api(`/api/inspections?${q}`), api(`/api/inspections?${q}&decision=reject`)]);
      ls.rate = { parts: all.total, rejects: rej.total, window_min: win };
      ls.rateAt = Date.now();
    } catch { /* shown stale */ }
  }));
  changed("rate");
}

// Sparkplug edge nodes and devices (GET /api/nodes, the token's lines only): shown per line on the overview.
async function pollNodes() {
  if (!session.me) return;
  try {
    const body = await api("/api/nodes");
    const at = Date.now();
    for (const line of session.me.lines) {
      const ls = lineStore(line);
      ls.nodes = body.items.filter((n) => n.line === line);
      ls.nodesAt = at;
      ls.nodesStaleAfter = body.stale_after_s;
    }
  } catch { /* shown stale */ }
  changed("nodes");
}

function tick() {
  const age = Date.now() - link.lastContact;
  const stale = session.me && age > STALE_MS;
  if (stale !== store.stale) {
    store.stale = stale;
    store.staleSince = link.lastContact;
    document.body.classList.toggle("stale", stale);
    changed("stale");
  }
  const b = $("stale-banner");
  b.hidden = !stale;
  if (stale) {
    b.textContent = `No answer from the lineguard server for ${Math.round(age / 1000)} s: everything shown is stale since ` +
      `${fmtClock(store.staleSince)}. Do not rely on it; check the line itself.`;
  }
  renderHeader();
}

// Alarms come over the live stream; this poll runs only while the stream is down (and once at sign-in).
export const ALARM_FALLBACK_MS = 4000;
function startPolling() {
  stopPolling();
  every(2000, pollStates);
  every(10000, pollRates);
  every(5000, pollNodes);
  every(ALARM_FALLBACK_MS, () => { if (!session.streamUp) loadAlarms().catch(() => {}); });
  every(1000, tick);
}

// ---- header: state pill, alarm count, stop --------------------------------------------------------
function renderHeader() {
  const ls = lineStore(session.line);
  const st = ls.state || {};
  const pill = $("state-pill");
  const s = st.state || "unknown";
  const lineStale = store.stale || Date.now() - ls.stateAt > 7000;
  if (lineStale) {
    pill.textContent = `NO DATA · was ${s.toUpperCase()}`;
    pill.className = "pill stale";
    pill.title = `Stale since ${fmtClock(store.stale ? store.staleSince : ls.stateAt)}`;
  } else {
    pill.textContent = s.toUpperCase() + (s === "running" && st.speed_pct ? ` · ${fmtNum(st.speed_pct, 0)}%` : "");
    pill.className = `pill ${s}`;
    pill.title = causeText(st.cause) || st.reason || "Line state from the PLC";
  }
  const n = store.alarms.unacked;
  $("alarm-count").textContent = String(n);
  $("alarm-badge").className = `alarm-badge${n ? " on" : ""}${store.alarms.items.some((a) => a.severity === "critical" && !a.acked_at) ? " critical" : ""}`;
  $("alarm-badge").setAttribute("aria-label", `${n} unacknowledged alarm${n === 1 ? "" : "s"}`);
  // push: kept current by the live stream; poll: the stream is down, read every few seconds.
  $("alarm-badge").dataset.via = store.alarms.via || "";
  $("alarm-badge").title = store.alarms.via === "poll" ? "Unacknowledged alarms (live stream down: read every few seconds)"
    : "Unacknowledged alarms (live)";
  const stop = $("hdr-stop");
  const [ok, why] = commandAllowed(session.line, "stop");
  stop.textContent = `Stop ${session.line}`;
  stop.disabled = !ok;
  stop.title = ok ? `Stop line ${session.line}` : `Stop not available: ${why}`;
  renderLineDetails(st);
}

function renderLineDetails(st) {
  const s = st.state || "unknown";
  const rows = [
    ["State", s], ["Why", causeText(st.cause) || st.reason || "–"],
    ["E-stop", st.estop === null || st.estop === undefined ? "–" : st.estop ? "ACTIVE" : "clear"],
    ["Guard door", st.guard_door === null || st.guard_door === undefined ? "–" : st.guard_door ? "OPEN" : "closed"],
    ["Speed setpoint", speedText(st)],
    ["Reject count (PLC)", st.reject_count ?? "–"],
  ];
  $("line-details").innerHTML = rows.map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd class="${v === "ACTIVE" || v === "OPEN" ? "alarm" : ""}">${esc(v)}</dd>`).join("");
}

// ---- live view ------------------------------------------------------------------------------------
const live = { camera: "", loading: false, pending: null, recent: [], times: [] };

function setCounters(c) {
  const ls = lineStore(c.line || session.line);
  ls.counters = c;
  ls.countersAt = Date.now();
  if ((c.line || session.line) !== session.line) return;
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
  $("recent").innerHTML = live.recent.map((r) => {
    const dec = r.decision || "pass";
    const cls = (r.defects || []).map((x) => x.cls).join(", ");
    return `<li><span class="dot ${esc(dec)}"></span><b>${esc(r.part_id || r.inspection_id)}</b>
      <span class="badge ${esc(dec)}">${esc(dec)}</span> <span class="muted cls" title="${esc(cls)}">${esc(cls)}</span>
      <span class="muted t">${esc(fmtTime(r.ts))}</span></li>`;
  }).join("");
}

function onFrame(d) {
  const ls = lineStore(d.line || session.line);
  const f = ls.frames[d.camera] || (ls.frames[d.camera] = { times: [] });
  f.last = d;
  f.at = Date.now();
  f.times.push(f.at);
  f.times = f.times.filter((t) => f.at - t < 10000);
  if ((d.line || session.line) !== session.line) return;
  const sel = $("camera-select");
  if (![...sel.options].some((o) => o.value === d.camera)) sel.append(new Option(d.camera, d.camera));
  if (!live.camera) { live.camera = d.camera; sel.value = d.camera; }
  if (d.camera === live.camera && !$("tab-live").hidden) loadFrame(d);
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
    if (kind === "counters") setCounters(d);
    else if (kind === "line_state") {
      const ls = lineStore(d.line || session.line);
      ls.state = mergeState(ls.state, d);
      ls.stateAt = Date.now();
      changed("state");
    } else if (kind === "inspection" && (!d.line || d.line === session.line)) onInspection(d);
    else if (kind === "frame") onFrame(d);
    else if (kind === "alarms") applyAlarmPage(d);
    else if (kind === "alarm") applyAlarmChange(d);
  }, (ok) => {
    session.streamUp = ok;
    document.body.classList.toggle("offline", !ok);
    if (!ok) loadAlarms().catch(() => {});  // at once, then every ALARM_FALLBACK_MS until the stream is back
  });
}

export function pollState() { return pollStates(); }
export function showLive() {
  const f = lineStore(session.line).frames[live.camera];
  if (f?.last) loadFrame(f.last);
}

// ---- boot -----------------------------------------------------------------------------------------
onChange((what) => {
  if (what && what.command) pollStates();
  renderHeader();
});
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
$("camera-select").addEventListener("change", (e) => {
  live.camera = e.target.value;
  const f = lineStore(session.line).frames[live.camera];
  if (f?.last) loadFrame(f.last);
});
$("line-select").addEventListener("change", (e) => {
  session.line = e.target.value;
  live.camera = "";
  $("camera-select").replaceChildren();
  prefillRecent();
  changed("line");
});
$("hdr-stop").addEventListener("click", () => sendCommand(session.line, "stop"));
$("alarm-badge").addEventListener("click", () => showTab("alarms"));
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
// Arrow keys move between tabs (the WAI-ARIA tabs pattern).
$("tabs").addEventListener("keydown", (e) => {
  if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
  const tabs = [...document.querySelectorAll("#tabs button")].filter((b) => !b.hidden);
  const i = tabs.indexOf(document.activeElement);
  const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  showTab(next.dataset.tab);
});

(async () => {
  if (auth.token) {
    try { await start(await login(auth.token)); return; } catch { auth.token = ""; }
  }
  showLogin();
})();
