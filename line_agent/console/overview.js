// Overview: every line at a glance. State with its cause, throughput and reject rate against the line's targets,
// each camera, the PLC link and the line's Sparkplug edge nodes and devices, the line's alarms, and stop / start buttons enabled by state and role.
// Everything greys out with "stale since ..." when the server or a source goes quiet.
import { api, esc, fmtAge, fmtClock, fmtNum } from "./api.js";
import { CAMERA_STALE_S, NODES_STALE_MS, STATE_STALE_MS, changed, lineStore, onChange, store } from "./state.js";
import { causeText, commandAllowed, sendCommand, sevBadge, speedText } from "./ui.js";

const $ = (id) => document.getElementById(id);
let S = null;
let wired = false;
const TONE_WORD = { green: "on target", amber: "warning", red: "alarm", grey: "no data", neutral: "" };

export function initOverview(session) {
  S = session;
  $("overview").replaceChildren(...session.me.lines.map(card));
  if (wired) return;
  wired = true;
  onChange(() => render());
  $("ov-targets-btn").addEventListener("click", () => editTargets(S.line));
}

function card(line) {
  const el = document.createElement("article");
  el.className = "line-card";
  el.dataset.line = line;
  el.setAttribute("aria-labelledby", `ov-title-${line}`);
  el.innerHTML = `
    <header><h3 id="ov-title-${esc(line)}">Line ${esc(line)}</h3><span class="pill unknown" data-f="pill">UNKNOWN</span>
      <span class="stale-note" data-f="stale" hidden></span></header>
    <p class="cause" data-f="cause"></p>
    <div class="kpis">
      <div class="kpi" data-kpi="throughput"><div class="k">Throughput</div><div class="v" data-f="tput">–</div>
        <div class="t" data-f="tput-t"></div></div>
      <div class="kpi" data-kpi="reject-rate"><div class="k">Reject rate</div><div class="v" data-f="rate">–</div>
        <div class="t" data-f="rate-t"></div></div>
      <div class="kpi" data-kpi="speed"><div class="k">Speed setpoint</div><div class="v" data-f="speed">–</div>
        <div class="t" data-f="speed-t"></div></div>
      <div class="kpi" data-kpi="rejects"><div class="k">Rejected parts</div><div class="v" data-f="rej">–</div>
        <div class="t" data-f="rej-t"></div></div>
    </div>
    <div class="sources"><h4>Sources</h4><ul data-f="sources"></ul></div>
    <div class="ov-alarms" data-f="alarms"></div>
    <div class="actions">
      <button type="button" class="danger" data-cmd="stop" hidden>Stop ${esc(line)}</button>
      <button type="button" class="primary" data-cmd="start" hidden>Start ${esc(line)}</button>
      <span class="muted why" data-f="why"></span></div>`;
  for (const b of el.querySelectorAll("button[data-cmd]")) {
    b.addEventListener("click", () => sendCommand(line, b.dataset.cmd));
  }
  return el;
}

function set(el, f, text, cls) {
  const n = el.querySelector(`[data-f="${f}"]`);
  if (n.textContent !== text) n.textContent = text;
  if (cls !== undefined) n.className = cls;
  return n;
}

function toneRate(rate, t) {
  if (!rate || !t) return ["grey", "–", ""];
  const win = `last ${fmtNum(rate.window_min, 0)} min`;
  if (rate.parts < t.reject_min_parts) {
    return ["grey", rate.parts ? `${fmtNum((100 * rate.rejects) / rate.parts, 1)} %` : "–",
      `${win}: ${rate.parts} parts (a rate needs ${t.reject_min_parts})`];
  }
  const r = rate.rejects / rate.parts;
  const tone = r >= t.reject_red ? "red" : r >= t.reject_amber ? "amber" : "green";
  return [tone, `${fmtNum(r * 100, 1)} %`,
    `${win}: ${rate.rejects} of ${rate.parts} · amber from ${fmtNum(t.reject_amber * 100, 1)} %, red from ${fmtNum(t.reject_red * 100, 1)} %`];
}

function toneThroughput(ppm, st, t) {
  if (ppm === null || ppm === undefined) return ["grey", "–", "no parts counted"];
  const v = `${fmtNum(ppm, 1)} parts/min`;
  if (!t || !t.throughput_ppm) return ["neutral", v, "no target set"];
  if (st?.state !== "running") return ["neutral", v, `target ${fmtNum(t.throughput_ppm, 1)} (line not running)`];
  const f = ppm / t.throughput_ppm;
  const tone = f >= t.throughput_amber ? "green" : f >= t.throughput_red ? "amber" : "red";
  return [tone, v, `target ${fmtNum(t.throughput_ppm, 1)} · ${fmtNum(f * 100, 0)} % of it`];
}

function sources(ls, st, now) {
  const out = [];
  // The PLC link: unknown line state means the link (or the controller) is down: never shown as good.
  if (st.state === "unknown") out.push(["bad", "plc", `PLC link: down: ${st.reason || "line state unknown"}`]);
  else out.push(["ok", "plc", `PLC link: connected${st.ts ? ` · read ${fmtClock(Date.parse(st.ts))}` : ""}`]);
  const safety = [];
  if (st.estop) safety.push("E-STOP ACTIVE");
  if (st.guard_door) safety.push("GUARD DOOR OPEN");
  if (st.safe_state) safety.push("PLC SAFE STATE");
  if (safety.length) out.push(["bad", "safety", safety.join(" · ")]);
  else if (st.estop !== undefined && st.estop !== null) out.push(["ok", "safety", "E-stop clear · guard door closed"]);
  const cams = st.cameras && Object.keys(st.cameras).length ? st.cameras : null;
  if (cams) {
    for (const [name, c] of Object.entries(cams)) {
      const age = c.last_frame_ts ? now / 1000 - c.last_frame_ts : null;
      let tone = "ok";
      let text = `${c.state} · ${fmtNum(c.fps, 1)} frames/s · last frame ${age === null ? "never" : fmtAge(age) + " ago"}`;
      if (c.state === "idle") { tone = "neutral"; text = "idle (the line is stopped)"; }
      else if (["model_error", "ended", "error"].includes(c.state)) { tone = "bad"; text = `${c.state}: ${c.detail || ""}`; }
      else if (st.state === "running" && (age === null || age > CAMERA_STALE_S)) {
        tone = "bad";
        text = `no frame for ${age === null ? "ever" : fmtAge(age)} (${c.state}${c.detail ? `: ${c.detail}` : ""})`;
      } else if (c.state !== "connected") { tone = "amber"; }
      out.push([tone, `camera:${name}`, `Camera ${name}${c.model ? ` (${c.model})` : ""}: ${text}`]);
    }
  } else {
    // No runtime reports cameras to this API: what the live stream shows of them.
    const frames = Object.entries(ls.frames);
    if (!frames.length) out.push(["grey", "camera", "Cameras: no camera reported yet"]);
    for (const [name, f] of frames) {
      const age = (now - f.at) / 1000;
      const fps = f.times.length / 10;
      const tone = age > CAMERA_STALE_S ? "bad" : "ok";
      out.push([tone, `camera:${name}`, `Camera ${name}: ${fmtNum(fps, 1)} frames/s · last frame ${fmtAge(age)} ago`]);
    }
  }
  out.push(...sparkplug(ls, now));
  return out;
}

// Sparkplug sources of the line (GET /api/nodes): one row per edge node, and per device only when it is not
// doing what its node does (a dead node's devices are in its row). Ages run on from the server's silent_s.
function sparkplug(ls, now) {
  const nodes = ls.nodes || [];
  if (!nodes.length) return [];
  const old = !ls.nodesAt || now - ls.nodesAt > NODES_STALE_MS;
  const since = (t) => (t ? fmtClock(Date.parse(t)) : "–");
  const rows = [];
  for (const n of nodes) {
    const node = nodes.find((m) => m.edge_node === n.edge_node && m.device === "");
    if (n.device && node && node.status === n.status && n.status !== "alive") continue;
    const silent = n.silent_s === null ? null : n.silent_s + (now - ls.nodesAt) / 1000;
    const devs = n.device ? [] : nodes.filter((m) => m.edge_node === n.edge_node && m.device && m.status === n.status);
    const name = `Sparkplug ${n.device ? "device" : "node"} ${n.group_id}/${n.edge_node}${n.device ? "/" + n.device : ""}`;
    const withDevs = devs.length ? ` (${devs.length} device${devs.length === 1 ? "" : "s"})` : "";
    let tone = "ok";
    let text;
    if (n.status === "alive") text = `alive · last message ${fmtAge(silent)} ago`;
    else if (n.status === "stale") {
      tone = "amber";
      text = `stale: silent for ${fmtAge(silent)} (since ${since(n.last_seen)}; stale after ${fmtAge(ls.nodesStaleAfter)})`;
    } else if (n.status === "dead") {
      tone = "bad";
      text = `dead since ${since(n.death_at || node?.death_at)} · last message ${fmtAge(silent)} ago`;
    } else { tone = "amber"; text = "unknown: data without a birth (rebirth requested)"; }
    if (old) text += ` · list stale since ${fmtClock(ls.nodesAt)}`;
    rows.push([old ? "stale" : tone, `sparkplug:${n.edge_node}${n.device ? "/" + n.device : ""}`,
      `${name}${withDevs}: ${text}`, n.status]);
  }
  return rows;
}

function render() {
  if (!S?.me) return;
  const now = Date.now();
  for (const el of document.querySelectorAll("#overview .line-card")) {
    const line = el.dataset.line;
    const ls = lineStore(line);
    const st = ls.state || {};
    const stale = store.stale || !ls.stateAt || now - ls.stateAt > STATE_STALE_MS;
    const since = store.stale ? store.staleSince : ls.stateAt;
    el.classList.toggle("stale", stale);
    el.dataset.stale = String(stale);
    const note = set(el, "stale", stale ? (since ? `stale since ${fmtClock(since)}` : "no data yet") : "");
    note.hidden = !stale;
    const s = st.state || "unknown";
    set(el, "pill", stale ? `NO DATA · was ${s.toUpperCase()}` : s.toUpperCase(), `pill ${stale ? "stale" : s}`);
    set(el, "cause", causeText(st.cause) || st.reason || (s === "unknown" ? "" : "no cause reported"));
    const fresh = ls.counters && now - ls.countersAt < 15000;
    const ppm = fresh && ls.counters.throughput_ppm !== undefined ? ls.counters.throughput_ppm
      : ls.rate ? ls.rate.parts / ls.rate.window_min : null;
    kpi(el, "throughput", toneThroughput(ppm, st, ls.targets), "tput", stale);
    kpi(el, "reject-rate", toneRate(ls.rate, ls.targets), "rate", stale);
    set(el, "speed", speedText(st));
    set(el, "speed-t", st.speed_pct === 0 && s === "running" ? "lineguard has not set a speed; the PLC's own runs" : "");
    const plc = st.reject_count;
    const mine = ls.counters ? ls.counters.reject : null;
    set(el, "rej", `PLC ${plc ?? "–"} · lineguard ${mine ?? "–"}`);
    const diff = plc !== null && plc !== undefined && mine !== null && mine !== undefined ? mine - plc : null;
    set(el, "rej-t", diff ? `differ by ${Math.abs(diff)}: the PLC counts gate pulses since its counter was last reset; ` +
      "lineguard counts parts it decided reject since the runtime started (a refused gate pulse or a counter reset " +
      "makes them differ)" : "PLC: gate pulses since the last counter reset · lineguard: reject decisions since start");
    const ul = el.querySelector('[data-f="sources"]');
    ul.innerHTML = sources(ls, st, now).map(([tone, key, text, status]) =>
      `<li class="src ${stale ? "stale" : tone}" data-src="${esc(key)}"${status ? ` data-status="${esc(status)}"` : ""}><span class="dot-${esc(tone)}" aria-hidden="true"></span>${esc(text)}</li>`).join("");
    const mine2 = store.alarms.items.filter((a) => a.line === line);
    const al = el.querySelector('[data-f="alarms"]');
    al.innerHTML = mine2.length
      ? `<b>${mine2.length} alarm${mine2.length === 1 ? "" : "s"}</b> ` + mine2.slice(0, 3).map((a) =>
        `<div>${sevBadge(a.severity)} ${esc(a.title)}${a.reason ? `: <span class="muted">${esc(a.reason)}</span>` : ""}${a.acked_at ? ' <span class="muted">(acknowledged)</span>' : ""}</div>`).join("")
      : '<span class="muted">No alarms.</span>';
    const whys = [];
    for (const b of el.querySelectorAll("button[data-cmd]")) {
      const cmd = b.dataset.cmd;
      b.hidden = !S.me.can[`command:${cmd}`];
      const [ok, why] = commandAllowed(line, cmd);
      b.disabled = !ok;
      b.title = ok ? `${cmd} line ${line}` : `${cmd}: ${why}`;
      if (!b.hidden && !ok) whys.push(`${cmd}: ${why}`);
    }
    set(el, "why", whys.join(" · "));
  }
  $("ov-updated").textContent = store.stale ? `stale since ${fmtClock(store.staleSince)}` : `updated ${fmtClock(now)}`;
}

function kpi(el, name, [tone, value, hint], f, stale) {
  const box = el.querySelector(`[data-kpi="${name}"]`);
  const t = stale ? "grey" : tone;
  box.className = `kpi tone-${t}`;
  box.dataset.tone = t;
  set(el, f, value);
  set(el, `${f}-t`, `${TONE_WORD[t] ? TONE_WORD[t] + " · " : ""}${hint}`);
}

// ---- targets --------------------------------------------------------------------------------------
const PCT = ["throughput_amber", "throughput_red", "reject_amber", "reject_red"];

async function editTargets(line) {
  const t = await api(`/api/targets?line=${encodeURIComponent(line)}`);
  const form = $("targets-form");
  $("targets-title").textContent = `Targets of line ${line}`;
  $("targets-save").textContent = `Save targets of ${line}`;
  $("targets-status").textContent = "";
  for (const [k, v] of Object.entries(t)) {
    if (!form.elements[k]) continue;
    form.elements[k].value = v === null ? "" : PCT.includes(k) ? Number((v * 100).toFixed(3)) : v;
  }
  const dlg = $("targets");
  dlg.returnValue = "";
  dlg.showModal();
  dlg.addEventListener("close", async () => {
    if (dlg.returnValue !== "save") return;
    const body = { line };
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.value === "") { if (["throughput_ppm", "energy_kwh_h_max"].includes(el.name)) body[el.name] = null; continue; }
      body[el.name] = PCT.includes(el.name) ? Number(el.value) / 100 : Number(el.value);
    }
    try {
      lineStore(line).targets = await api("/api/targets", { method: "PUT", body });
      lineStore(line).targetsAt = Date.now();
      changed("targets");
    } catch (e) {
      $("targets-status").textContent = `Not saved: ${e.message}`;
      dlg.showModal();
    }
  }, { once: true });
}
