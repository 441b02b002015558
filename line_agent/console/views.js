// The console's tabs: review gallery + label editor, telemetry, agent, control, models; the tab switcher.
import { api, apiBlob, esc, fmtClock, fmtNum, fmtTime, verdicts } from "./api.js";
import { showAlarms } from "./alarms.js";
import { auditTable, loadAudit } from "./audit.js";
import { COLORS, barChart, buckets, timeChart } from "./charts.js";
import { drawDetections } from "./draw.js";
import { loadPeople } from "./people.js";
import { changed, onChange } from "./state.js";
import { commandAllowed, confirmDialog, sendCommand } from "./ui.js";

const $ = (id) => document.getElementById(id);
// The six PCB classes: what the editor offers when no runtime says which classes a camera's model has
// (GET /api/cameras/{camera}/classes answers with the model's own, for any product).
const CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"];
const loaders = {};
let S = null; // the session (me, line)
let wired = false;

export function showTab(name) {
  const btn = document.querySelector(`#tabs button[data-tab="${name}"]`);
  if (!loaders[name] || !btn || btn.hidden) name = "overview";
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === name);
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
    b.tabIndex = b.dataset.tab === name ? 0 : -1;
  }
  for (const t of document.querySelectorAll("main .tab")) t.hidden = t.id !== `tab-${name}`;
  history.replaceState(null, "", `#${name}`);
  Promise.resolve(loaders[name]()).catch((e) => console.warn(`tab ${name}`, e));
}
loaders.overview = () => changed("tab");
loaders.live = async () => { (await import("./app.js")).showLive(); };
loaders.alarms = () => showAlarms();
loaders.audit = () => loadAudit();
loaders.people = () => loadPeople();

// ---- review ---------------------------------------------------------------------------------------
const gal = { offset: 0, limit: 24, total: 0 };
let modelClasses = {};  // camera -> classes of the model it runs (registry)

export function initReview(session) {
  S = session;
  loaders.review = loadGallery;
  const f = $("gallery-filter");
  f.elements.line.replaceChildren(...session.me.lines.map((l) => new Option(l, l)));
  f.elements.line.value = session.line;
  if (wired) return;
  const sel = f.elements.cls;
  for (const c of CLASSES) sel.append(new Option(c, c));
  verdicts().then((vs) => {
    for (const v of vs) {
      f.elements.decision.append(new Option(v, v));
      f.elements.model_decision.append(new Option(v, v));  // a reject overridden to pass still matches reject
    }
  }).catch(() => {});
  $("ed-class").replaceChildren(...CLASSES.map((c) => new Option(c, c)));
  f.addEventListener("submit", (e) => { e.preventDefault(); gal.offset = 0; loadGallery(); });
  $("g-prev").addEventListener("click", () => { gal.offset = Math.max(0, gal.offset - gal.limit); loadGallery(); });
  $("g-next").addEventListener("click", () => { if (gal.offset + gal.limit < gal.total) { gal.offset += gal.limit; loadGallery(); } });
  wireEditor();
}

async function loadCameras() {
  // Cameras and the classes of the model each runs, for the camera filter and the editor.
  try {
    const m = await api("/api/models");
    const byName = Object.fromEntries(m.versions.map((v) => [`${v.name}:${v.version}`, v.classes]));
    modelClasses = Object.fromEntries(m.cameras.map((c) => [c.camera, byName[c.model] || []]));
    const cam = $("gallery-filter").elements.camera;
    const have = new Set([...cam.options].map((o) => o.value));
    for (const c of m.cameras) if (!have.has(c.camera)) cam.append(new Option(c.camera, c.camera));
  } catch { /* filters still work */ }
}

async function loadGallery() {
  if (!Object.keys(modelClasses).length) await loadCameras();
  const f = new FormData($("gallery-filter"));
  const q = new URLSearchParams({ limit: gal.limit, offset: gal.offset, line: f.get("line") || S.line });
  for (const k of ["cls", "decision", "model_decision", "overridden", "camera"]) if (f.get(k)) q.set(k, f.get(k));
  for (const k of ["since", "until"]) if (f.get(k)) q.set(k, new Date(f.get(k)).toISOString());
  const page = await api(`/api/inspections?${q}`);
  gal.total = page.total;
  $("gallery-count").textContent = `${page.total} inspection${page.total === 1 ? "" : "s"}`;
  // Which load is shown and with which filters (tests wait on these).
  $("gallery-count").dataset.n = String((gal.loads = (gal.loads || 0) + 1));
  $("gallery-count").dataset.q = q.toString();
  $("g-page").textContent = page.total ? `${gal.offset + 1}–${Math.min(gal.offset + gal.limit, page.total)} of ${page.total}` : "";
  const g = $("gallery");
  g.replaceChildren();
  for (const it of page.items) {
    const eff = it.override || it.decision;
    const card = document.createElement("button");
    card.type = "button";
    card.className = `thumb ${eff}`;
    card.dataset.id = it.inspection_id;
    card.setAttribute("aria-label", `Part ${it.part_id}, ${eff}${it.override ? ` (model said ${it.decision})` : ""}, ${it.classes.join(", ") || "no defects"}`);
    card.innerHTML = `<div class="img"><span class="muted">${it.has_frame ? "loading…" : "no frame kept"}</span></div>
      <div class="cap"><span class="badge ${esc(eff)}">${esc(eff)}</span>${it.override ? `<span class="badge ov" title="overridden by a person">${esc(it.decision)} → ${esc(it.override)}</span>` : ""}
      ${it.corrected ? '<span class="badge fixed">relabelled</span>' : ""}<br>
      <b>${esc(it.part_id)}</b> <span class="muted">${esc(it.camera)}</span><br>
      <span class="muted">${esc(it.classes.join(", ") || "no defects")} · ${esc(fmtTime(it.ts))}</span></div>`;
    card.addEventListener("click", () => openEditor(it.inspection_id));
    g.append(card);
    if (it.has_frame) thumbnail(card.querySelector(".img"), it.inspection_id);
  }
  if (!page.items.length) g.innerHTML = '<p class="muted empty">No inspection matches these filters.</p>';
}

async function thumbnail(div, id) {
  try {
    const url = URL.createObjectURL(await apiBlob(`/api/inspections/${encodeURIComponent(id)}/frame`));
    div.innerHTML = "";
    const img = new Image();
    img.src = url;
    img.alt = `frame of inspection ${id}`;
    div.append(img);
  } catch { div.innerHTML = '<span class="muted">no frame</span>'; }
}

const ed = { id: "", img: null, boxes: [], sel: -1, scale: 1, drag: null, detail: null };

function wireEditor() {
  const cv = $("ed-canvas");
  // The canvas holds the image at full resolution and is scaled by CSS: map screen pixels back to image pixels.
  const pos = (e) => { const r = cv.getBoundingClientRect(); return [(e.clientX - r.left) * cv.width / r.width, (e.clientY - r.top) * cv.height / r.height]; };
  cv.addEventListener("mousedown", (e) => {
    const [x, y] = pos(e);
    const hit = ed.boxes.findIndex((b) => x >= b.box[0] && x <= b.box[2] && y >= b.box[1] && y <= b.box[3]);
    if (hit >= 0) { ed.sel = hit; $("ed-class").value = ed.boxes[hit].cls; redraw(); return; }
    ed.drag = [x, y, x, y];
  });
  cv.addEventListener("mousemove", (e) => {
    if (!ed.drag) return;
    const [x, y] = pos(e);
    ed.drag[2] = x; ed.drag[3] = y;
    redraw();
  });
  window.addEventListener("mouseup", () => {
    if (!ed.drag) return;
    const [a, b, c, d] = ed.drag;
    ed.drag = null;
    const box = [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)].map((v) => Math.round(v));
    box[0] = Math.max(0, box[0]); box[1] = Math.max(0, box[1]);
    box[2] = Math.min(ed.img.width, box[2]); box[3] = Math.min(ed.img.height, box[3]);
    if (box[2] - box[0] >= 3 && box[3] - box[1] >= 3) {
      ed.boxes.push({ cls: $("ed-class").value, box });
      ed.sel = ed.boxes.length - 1;
    }
    redraw();
  });
  $("ed-class").addEventListener("change", (e) => { if (ed.sel >= 0) { ed.boxes[ed.sel].cls = e.target.value; redraw(); } });
  $("ed-delete").addEventListener("click", () => { if (ed.sel >= 0) { ed.boxes.splice(ed.sel, 1); ed.sel = -1; redraw(); } });
  $("ed-close").addEventListener("click", () => $("editor").close());
  $("ed-save").addEventListener("click", saveLabels);
  // Keyboard: Delete removes the selected box, Tab-reachable list items select one.
  $("editor").addEventListener("keydown", (e) => {
    if ((e.key === "Delete" || e.key === "Backspace") && ed.sel >= 0 && e.target.tagName !== "INPUT") {
      ed.boxes.splice(ed.sel, 1); ed.sel = -1; redraw();
    }
  });
}

function overrideButtons(all) {
  const box = $("ed-ov-buttons");
  const eff = ed.detail.override || ed.detail.decision;
  box.replaceChildren(...all.filter((v) => v !== eff).map((v) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `Mark ${v}`;
    b.dataset.ov = v;
    b.addEventListener("click", () => overrideTo(v));
    return b;
  }));
}

async function overrideTo(v) {
  const d = ed.detail;
  const ok = await confirmDialog(`Override part ${d.part_id}`,
    `Change the decision of part ${d.part_id} (line ${d.line}, ${d.camera}) from “${d.override || d.decision}” to “${v}”?`,
    `Override to ${v}`, { tone: v === "reject" ? "danger" : "primary" });
  if (!ok) return;
  try {
    await api(`/api/inspections/${encodeURIComponent(ed.id)}/override`, { method: "POST",
      body: { confirm: true, decision: v, reason: ok.reason } });
    await refreshDetail(`Decision overridden to ${v}.`);
    loadGallery();
  } catch (e) { $("ed-status").textContent = `Refused: ${e.message}`; }
}

function redraw() {
  if (!ed.img) return;
  const boxes = ed.boxes.slice();
  if (ed.drag) {
    const [a, b, c, d] = ed.drag;
    boxes.push({ cls: $("ed-class").value, box: [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)] });
  }
  ed.scale = drawDetections($("ed-canvas"), ed.img, boxes, null, ed.sel);
  $("ed-boxes").innerHTML = ed.boxes.map((b, i) =>
    `<li class="${i === ed.sel ? "sel" : ""}" data-i="${i}" tabindex="0" role="button" aria-pressed="${i === ed.sel}">${esc(b.cls)} <span class="muted">[${b.box.map((v) => Math.round(v)).join(", ")}]</span></li>`).join("")
    || '<li class="muted">No boxes: a good part.</li>';
  for (const li of $("ed-boxes").querySelectorAll("li[data-i]")) {
    const pick = () => { ed.sel = Number(li.dataset.i); $("ed-class").value = ed.boxes[ed.sel].cls; redraw(); };
    li.addEventListener("click", pick);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
  }
}

function renderMeta(d) {
  $("ed-meta").innerHTML = [["Part", d.part_id], ["Line", d.line], ["Camera", d.camera], ["Time", fmtTime(d.ts)],
    ["Decision", d.decision + (d.override ? ` → ${d.override} (override)` : "")], ["Model", d.model || "–"],
    ["Latency", d.latency_ms ? `${fmtNum(d.latency_ms, 1)} ms` : "–"],
    ["Relabelled", d.corrected ? `yes (${d.corrections.length}×)` : "no"]]
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd data-k="${esc(k)}">${esc(v)}</dd>`).join("");
}

async function refreshDetail(status) {
  ed.detail = await api(`/api/inspections/${encodeURIComponent(ed.id)}`);
  renderMeta(ed.detail);
  overrideButtons(await verdicts());
  if (status) $("ed-status").textContent = status;
}

async function openEditor(id) {
  const d = await api(`/api/inspections/${encodeURIComponent(id)}`);
  ed.id = id; ed.detail = d; ed.sel = -1;
  // The classes of the model this camera runs now (any product's), as the server will accept them.
  let offer = CLASSES;
  try {
    const c = await api(`/api/cameras/${encodeURIComponent(d.camera)}/classes?line=${encodeURIComponent(d.line || S.line)}`);
    offer = c.classes;
  } catch {
    const mine = modelClasses[d.camera] || [];
    if (mine.length) offer = mine;
  }
  ed.classes = offer;
  $("ed-class").replaceChildren(...offer.map((c) => new Option(c, c)));
  ed.boxes = d.defects.filter((x) => offer.includes(x.cls)).map((x) => ({ cls: x.cls, box: x.box.slice() }));
  if (d.corrections.length) {
    ed.boxes = d.corrections[d.corrections.length - 1].labels.map((x) => ({ cls: x.cls, box: x.box.slice() }));
  }
  $("ed-title").textContent = `Inspection ${id}`;
  $("ed-status").textContent = "";
  renderMeta(d);
  overrideButtons(await verdicts());
  $("editor").showModal();
  try {
    ed.img = await createImageBitmap(await apiBlob(`/api/inspections/${encodeURIComponent(id)}/frame`));
    redraw();
  } catch { ed.img = null; $("ed-status").textContent = "No frame stored for this inspection."; }
}

async function saveLabels() {
  try {
    const body = { labels: ed.boxes.map((b) => ({ cls: b.cls, x1: b.box[0], y1: b.box[1], x2: b.box[2], y2: b.box[3] })) };
    const r = await api(`/api/inspections/${encodeURIComponent(ed.id)}/labels`, { method: "POST", body });
    await refreshDetail(`Saved ${r.labels} label${r.labels === 1 ? "" : "s"} to the training set.`);
    loadGallery();
  } catch (e) { $("ed-status").textContent = `Not saved: ${e.message}`; }
}

// ---- telemetry ------------------------------------------------------------------------------------
const BUCKET = { hour: [3600, "hour"], day: [86400, "day"], "15m": [900, "15 min"] };
let teleTimer = null;

export function initTelemetry(session) {
  S = session;
  loaders.telemetry = loadTelemetry;
  if (wired) return;
  $("t-range").addEventListener("change", loadTelemetry);
  $("t-refresh").addEventListener("click", loadTelemetry);
  $("t-auto").addEventListener("change", schedule);
  onChange((what) => { if (what === "line" && !$("tab-telemetry").hidden) loadTelemetry(); });
}

function schedule() {
  clearTimeout(teleTimer);
  if ($("t-auto").checked && !$("tab-telemetry").hidden) teleTimer = setTimeout(loadTelemetry, 60000);
}

async function markers(since) {
  // Stops (people's and rules') and alarms, as vertical lines on the time charts.
  const q = `line=${encodeURIComponent(S.line)}`;
  const [cmds, alarms] = await Promise.all([
    api(`/api/commands?${q}&limit=200`).catch(() => ({ items: [] })),
    api(`/api/alarms?${q}&state=all&since=${encodeURIComponent(since)}&limit=200`).catch(() => ({ items: [] }))]);
  const out = [];
  for (const c of cmds.items) {
    if (c.command === "stop" && c.status === "ok") out.push({ ts: Date.parse(c.ts) / 1000, kind: "stop", color: COLORS.red, label: `stop by ${c.actor}` });
  }
  for (const a of alarms.items) {
    const stop = a.kind === "rule_stop" || a.kind === "estop" || a.kind === "safe_state";
    out.push({ ts: Date.parse(a.raised_at) / 1000, kind: stop ? "stop" : "alarm", color: stop ? COLORS.red : COLORS.amber, label: a.title });
  }
  return out;
}

async function loadTelemetry() {
  const hours = Number($("t-range").value);
  const q = `line=${encodeURIComponent(S.line)}&hours=${hours}`;
  const bucket = hours > 72 ? "day" : "hour";
  const [w, word] = BUCKET[bucket];
  const [en, fa, dr, sh] = await Promise.all([
    api(`/api/telemetry/energy?${q}&bucket=${bucket}`), api(`/api/telemetry/faults?${q}`),
    api(`/api/telemetry/defect-rate?${q}`), api(`/api/telemetry/shifts?${q}`)]);
  const mk = await markers(en.since);
  const [xs, rows] = buckets(en.since, en.until, w, en.items);
  const val = (f) => rows.map((r) => (r ? f(r) : null));
  $("h-energy").textContent = `Energy per ${word} (kWh)`;
  $("h-tput").textContent = `Good parts per ${word}`;
  timeChart($("ch-power"), xs, [{ label: "average power", unit: "kW", color: COLORS.teal,
    values: val((r) => (r.kwh || r.good_parts ? r.kwh / (w / 3600) : null)) }], { title: "Average power", markers: mk });
  timeChart($("ch-tput"), xs, [{ label: "good parts", unit: `parts/${word}`, color: COLORS.green, bars: true,
    values: val((r) => r.good_parts) }], { title: "Throughput", markers: mk });
  timeChart($("ch-energy"), xs, [{ label: "energy", unit: "kWh", color: COLORS.blue, bars: true,
    values: val((r) => r.kwh) }], { title: `Energy per ${word}`, markers: mk });
  timeChart($("ch-energy-part"), xs, [{ label: "energy per good part", unit: "Wh", color: COLORS.purple,
    values: val((r) => (r.kwh_per_good_part === null ? null : r.kwh_per_good_part * 1000)) }],
  { title: "Energy per good part", markers: mk });
  barChart($("ch-faults"), fa.items.map((f) => f.device), [
    { label: "downtime", unit: "min", values: fa.items.map((f) => f.downtime_s / 60), color: COLORS.red },
    { label: "faults", unit: "count", values: fa.items.map((f) => f.faults), color: COLORS.amber }],
  { title: "Downtime and faults per machine" });
  barChart($("ch-defects"), dr.items.map((r) => r.cls), [{ label: "parts with the class", unit: "%",
    values: dr.items.map((r) => r.rate * 100), color: COLORS.red }], { title: "Defect rate by class" });
  const sl = sh.items.map((s) => `${s.day.slice(5)} ${s.shift}`);
  barChart($("ch-shift-reject"), sl, [{ label: "reject rate", unit: "%", values: sh.items.map((s) => s.reject_rate === null ? null : s.reject_rate * 100), color: COLORS.red }], { title: "Reject rate per shift" });
  barChart($("ch-shift-energy"), sl, [{ label: "energy per good part", unit: "Wh", values: sh.items.map((s) => s.kwh_per_good_part === null ? null : s.kwh_per_good_part * 1000), color: COLORS.blue }], { title: "Energy per good part per shift" });
  $("shift-table").innerHTML = `<caption class="sr-only">Shift comparison</caption><thead><tr><th>Day</th><th>Shift</th><th>Parts</th><th>Rejects</th><th>Reject rate</th>
    <th>kWh</th><th>Wh / good part</th><th>Faults</th><th>Downtime</th></tr></thead><tbody>` +
    sh.items.map((s) => `<tr><td>${esc(s.day)}</td><td>${esc(s.shift)}</td><td>${s.parts}</td><td>${s.rejects}</td>
      <td>${s.reject_rate === null ? "–" : fmtNum(s.reject_rate * 100, 1) + " %"}</td><td>${fmtNum(s.kwh, 3)}</td>
      <td>${s.kwh_per_good_part === null ? "–" : fmtNum(s.kwh_per_good_part * 1000, 2)}</td><td>${s.faults}</td><td>${fmtNum(s.downtime_s / 60, 1)} min</td></tr>`).join("") +
    "</tbody>";
  $("t-updated").textContent = `updated ${fmtClock(Date.now())} · ${word} buckets · ${mk.length} marker(s)`;
  schedule();
}

// ---- agent ----------------------------------------------------------------------------------------
const VERDICT = {
  verified: ["ok", "verified"], regenerated: ["ok", "verified on 2nd try"],
  fallback_template: ["warn", "template (model failed checks)"], template: ["info", "template"],
  no_data: ["info", "no data"], error: ["bad", "error"],
};
const AGENT_TXT = {
  en: { none: "No summaries yet.", tokens: "tokens", cost: "cost", window: "window", asking: "Asking the agent…" },
  zh: { none: "暂无摘要。", tokens: "令牌", cost: "费用", window: "时间窗", asking: "正在请求摘要…" },
};

export function initAgent(session) {
  S = session;
  loaders.agent = loadSummaries;
  if (wired) return;
  $("a-lang").addEventListener("change", loadSummaries);
  $("a-hours").addEventListener("change", () => {
    // Any window (yesterday's night shift, a whole week): the browser's local times, sent with their zone.
    for (const el of document.querySelectorAll(".a-custom")) el.hidden = $("a-hours").value !== "custom";
  });
  $("a-request").addEventListener("click", async () => {
    const lang = $("a-lang").value;
    const body = { line: S.line, lang };
    if ($("a-hours").value === "custom") {
      if (!$("a-from").value || !$("a-to").value) { $("a-status").textContent = "Choose both times."; return; }
      body.start = new Date($("a-from").value).toISOString();
      body.end = new Date($("a-to").value).toISOString();
    } else {
      body.hours = Number($("a-hours").value);
    }
    $("a-status").textContent = AGENT_TXT[lang].asking;
    try {
      await api("/api/summaries", { method: "POST", body });
      $("a-status").textContent = "";
    } catch (e) { $("a-status").textContent = e.message; }
    loadSummaries();
  });
}

async function loadSummaries() {
  const lang = $("a-lang").value;
  const t = AGENT_TXT[lang];
  const rows = await api(`/api/summaries?line=${encodeURIComponent(S.line)}&lang=${lang}&limit=10`);
  $("summaries").innerHTML = rows.map((s) => {
    const [tone, label] = VERDICT[s.verdict] || ["info", s.verdict];
    return `<article class="card summary"><header><span class="verdict ${tone}">${esc(label)}</span>
      <h3>${esc(s.headline || "(no headline)")}</h3></header>
      <p class="prose">${esc(s.prose)}</p>
      <footer class="muted">${esc(t.window)} ${esc(fmtTime(s.window_start))} – ${esc(fmtTime(s.window_end))} ·
      ${esc(s.backend || "")} ${esc(s.model || "")} · ${esc(t.tokens)} ${s.tokens_in} in / ${s.tokens_out} out ·
      ${esc(t.cost)} $${fmtNum(s.cost_usd, 4)} · ${fmtNum(s.latency_ms, 0)} ms</footer></article>`;
  }).join("") || `<p class="muted empty">${esc(t.none)}</p>`;
}

// ---- control --------------------------------------------------------------------------------------
export function initControl(session) {
  S = session;
  loaders.control = loadControl;
  if (wired) return;
  const send = async (cmd, extra = {}) => {
    const out = await sendCommand(S.line, cmd, extra);
    if (!out) return;
    $("cmd-result").className = out.ok ? "ok" : "bad";
    $("cmd-result").textContent = out.text;
    loadControl();
  };
  $("cmd-stop").addEventListener("click", () => send("stop"));
  $("cmd-start").addEventListener("click", () => send("start"));
  $("cmd-reset").addEventListener("click", () => send("reset-rejects"));
  $("cmd-slow").addEventListener("click", () => send("slow", { speed_pct: Number($("slow-pct").value) }));
  $("to-audit").addEventListener("click", () => showTab("audit"));
  onChange(() => controlButtons());
}

function controlButtons() {
  if (!S?.me) return;
  $("cmd-line").textContent = S.line;
  const whys = [];
  for (const [id, cmd] of [["cmd-stop", "stop"], ["cmd-start", "start"], ["cmd-slow", "slow"], ["cmd-reset", "reset-rejects"]]) {
    const [ok, why] = commandAllowed(S.line, cmd);
    const b = $(id);
    b.disabled = !ok;
    b.title = ok ? "" : why;
    if (S.me.can[`command:${cmd}`] && !ok) whys.push(`${cmd}: ${why}`);
  }
  $("cmd-stop").textContent = `Stop ${S.line}`;
  $("cmd-start").textContent = `Start ${S.line}`;
  $("cmd-why").textContent = whys.join(" · ");
}

async function loadControl() {
  const can = S.me.can;
  controlButtons();
  if (can.override) {
    const [page, all] = await Promise.all([api(`/api/inspections?line=${encodeURIComponent(S.line)}&limit=8`),
      verdicts()]);  // the verdicts an override may choose: the server's contract, not a list here
    $("override-table").innerHTML = `<caption class="sr-only">Recent inspections</caption><thead><tr><th>Time</th><th>Part</th><th>Camera</th><th>Defects</th><th>Decision</th><th>Override to</th></tr></thead><tbody>` +
      page.items.map((i) => `<tr><td>${esc(fmtTime(i.ts))}</td><td>${esc(i.part_id)}</td><td>${esc(i.camera)}</td>
        <td>${esc(i.classes.join(", ") || "–")}</td><td><span class="badge ${esc(i.override || i.decision)}">${esc(i.override || i.decision)}</span></td>
        <td>${all.filter((d) => d !== (i.override || i.decision)).map((d) =>
          `<button type="button" class="small" data-ovid="${esc(i.inspection_id)}" data-part="${esc(i.part_id)}" data-ovto="${esc(d)}">${esc(d)}</button>`).join(" ")}</td></tr>`).join("") + "</tbody>";
    for (const b of $("override-table").querySelectorAll("button[data-ovid]")) {
      b.addEventListener("click", async () => {
        const ok = await confirmDialog(`Override part ${b.dataset.part}`,
          `Change the decision of part ${b.dataset.part} on line ${S.line} to “${b.dataset.ovto}”?`,
          `Override to ${b.dataset.ovto}`, { tone: b.dataset.ovto === "reject" ? "danger" : "primary" });
        if (!ok) return;
        try {
          await api(`/api/inspections/${encodeURIComponent(b.dataset.ovid)}/override`, { method: "POST",
            body: { confirm: true, decision: b.dataset.ovto, reason: ok.reason } });
        } catch (e) { $("cmd-result").textContent = `Override refused: ${e.message}`; }
        loadControl();
      });
    }
  }
  if (can.audit) {
    const a = await api(`/api/audit?limit=10&who=people&group=true`);
    $("audit-table").innerHTML = auditTable(a.items);
  }
}

// ---- models ---------------------------------------------------------------------------------------
export function initModels(session) {
  S = session;
  loaders.models = loadModels;
  wired = true;
}

function metricCells(m) {
  const pick = (...ks) => { for (const k of ks) if (m && m[k] !== undefined && typeof m[k] !== "object") return m[k]; return undefined; };
  return [pick("map50", "mAP50", "map_50"), pick("map", "map50_95", "mAP50-95"), pick("precision"), pick("recall"), pick("f1")]
    .map((v) => `<td>${v === undefined ? "–" : fmtNum(v, 3)}</td>`).join("");
}

async function loadModels() {
  const m = await api("/api/models");
  $("registry-path").textContent = m.registry ? `Registry: ${m.registry}` : "No registry configured.";
  $("camera-table").innerHTML = `<thead><tr><th>Camera</th><th>Model</th><th>From</th><th>Last inspection</th></tr></thead><tbody>` +
    (m.cameras.map((c) => `<tr><td>${esc(c.camera)}</td><td><b>${esc(c.model || "–")}</b></td><td>${esc(c.source)}</td>
      <td>${esc(fmtTime(c.last_seen))}</td></tr>`).join("") || '<tr><td colspan="4" class="muted">No camera has reported yet.</td></tr>') + "</tbody>";
  const running = new Set(m.cameras.map((c) => c.model));
  $("model-table").innerHTML = `<thead><tr><th>Model</th><th>Version</th><th>Created</th><th>mAP50</th><th>mAP50-95</th>
    <th>Precision</th><th>Recall</th><th>F1</th><th>Classes</th></tr></thead><tbody>` +
    (m.versions.map((v) => `<tr class="${running.has(`${v.name}:${v.version}`) ? "running" : ""}"><td>${esc(v.name)}</td>
      <td>${esc(v.version)}${running.has(`${v.name}:${v.version}`) ? ' <span class="badge pass">running</span>' : ""}</td>
      <td>${esc(v.created)}</td>${metricCells(v.metrics)}<td class="muted">${esc(v.classes.join(", "))}${v.error ? `<div class="bad">${esc(v.error)}</div>` : ""}</td></tr>`).join("")
      || '<tr><td colspan="9" class="muted">No registered versions.</td></tr>') + "</tbody>";
}
