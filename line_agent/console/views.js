// The console's tabs besides Live: review gallery + label editor, telemetry, agent, control, models.
import { api, apiBlob, esc, fmtNum, fmtTime, newKey, verdicts } from "./api.js";
import { COLORS, barChart, lineChart } from "./charts.js";
import { drawDetections } from "./draw.js";

const $ = (id) => document.getElementById(id);
const CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"];
const loaders = {};
let S = null; // the session (me, line)
let wired = false;

export function showTab(name) {
  if (!loaders[name]) name = "live";
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll("main .tab")) t.hidden = t.id !== `tab-${name}`;
  history.replaceState(null, "", `#${name}`);
  loaders[name]();
}
loaders.live = () => {};

function toLocalInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

// ---- review ---------------------------------------------------------------------------------------
const gal = { offset: 0, limit: 24, total: 0 };

export function initReview(session) {
  S = session;
  loaders.review = loadGallery;
  if (wired) return;
  const sel = document.querySelector("#gallery-filter [name=cls]");
  for (const c of CLASSES) sel.append(new Option(c, c));
  $("ed-class").replaceChildren(...CLASSES.map((c) => new Option(c, c)));
  $("gallery-filter").addEventListener("submit", (e) => { e.preventDefault(); gal.offset = 0; loadGallery(); });
  $("g-prev").addEventListener("click", () => { gal.offset = Math.max(0, gal.offset - gal.limit); loadGallery(); });
  $("g-next").addEventListener("click", () => { if (gal.offset + gal.limit < gal.total) { gal.offset += gal.limit; loadGallery(); } });
  wireEditor();
}

async function loadGallery() {
  const f = new FormData($("gallery-filter"));
  const q = new URLSearchParams({ limit: gal.limit, offset: gal.offset, line: S.line });
  for (const k of ["cls", "decision"]) if (f.get(k)) q.set(k, f.get(k));
  for (const k of ["since", "until"]) if (f.get(k)) q.set(k, new Date(f.get(k)).toISOString());
  const page = await api(`/api/inspections?${q}`);
  gal.total = page.total;
  $("gallery-count").textContent = `${page.total} inspection${page.total === 1 ? "" : "s"}`;
  $("g-page").textContent = page.total ? `${gal.offset + 1}–${Math.min(gal.offset + gal.limit, page.total)} of ${page.total}` : "";
  const g = $("gallery");
  g.replaceChildren();
  for (const it of page.items) {
    const eff = it.override || it.decision;
    const card = document.createElement("button");
    card.className = `thumb ${eff}`;
    card.dataset.id = it.inspection_id;
    card.innerHTML = `<div class="img"><span class="muted">${it.has_frame ? "loading…" : "no frame"}</span></div>
      <div class="cap"><span class="badge ${esc(eff)}">${esc(eff)}</span>${it.override ? '<span class="badge ov">override</span>' : ""}
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
    img.alt = id;
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
  for (const b of document.querySelectorAll("[data-ov]")) {
    b.addEventListener("click", async () => {
      const ok = await confirmDialog("Override decision",
        `Change the decision of part ${ed.detail.part_id} to "${b.dataset.ov}"?`, b.dataset.ov);
      if (!ok) return;
      try {
        await api(`/api/inspections/${encodeURIComponent(ed.id)}/override`, { method: "POST",
          body: { confirm: true, decision: b.dataset.ov, reason: ok.reason } });
        $("ed-status").textContent = `Decision overridden to ${b.dataset.ov}.`;
        loadGallery();
      } catch (e) { $("ed-status").textContent = `Refused: ${e.message}`; }
    });
  }
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
    `<li class="${i === ed.sel ? "sel" : ""}" data-i="${i}">${esc(b.cls)} <span class="muted">[${b.box.map((v) => Math.round(v)).join(", ")}]</span></li>`).join("")
    || '<li class="muted">No boxes: a good part.</li>';
  for (const li of $("ed-boxes").querySelectorAll("li[data-i]")) {
    li.addEventListener("click", () => { ed.sel = Number(li.dataset.i); $("ed-class").value = ed.boxes[ed.sel].cls; redraw(); });
  }
}

async function openEditor(id) {
  const d = await api(`/api/inspections/${encodeURIComponent(id)}`);
  ed.id = id; ed.detail = d; ed.sel = -1;
  ed.boxes = d.defects.filter((x) => CLASSES.includes(x.cls)).map((x) => ({ cls: x.cls, box: x.box.slice() }));
  if (d.corrections.length) {
    ed.boxes = d.corrections[d.corrections.length - 1].labels.map((x) => ({ cls: x.cls, box: x.box.slice() }));
  }
  $("ed-title").textContent = `Inspection ${id}`;
  $("ed-status").textContent = "";
  $("ed-meta").innerHTML = [["Part", d.part_id], ["Camera", d.camera], ["Time", fmtTime(d.ts)],
    ["Decision", d.decision + (d.override ? ` → ${d.override}` : "")], ["Model", d.model || "–"],
    ["Latency", d.latency_ms ? `${fmtNum(d.latency_ms, 1)} ms` : "–"], ["Relabelled", d.corrected ? "yes" : "no"]]
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
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
    $("ed-status").textContent = `Saved ${r.labels} label${r.labels === 1 ? "" : "s"} to the training set.`;
    loadGallery();
  } catch (e) { $("ed-status").textContent = `Not saved: ${e.message}`; }
}

// ---- confirmation dialog --------------------------------------------------------------------------
export function confirmDialog(title, text, okLabel = "Confirm") {
  return new Promise((resolve) => {
    const dlg = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    $("confirm-reason").value = "";
    dlg.returnValue = "";
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? { reason: $("confirm-reason").value } : null), { once: true });
    dlg.showModal();
  });
}

// ---- telemetry ------------------------------------------------------------------------------------
export function initTelemetry(session) {
  S = session;
  loaders.telemetry = loadTelemetry;
  if (wired) return;
  $("t-range").addEventListener("change", loadTelemetry);
  $("t-refresh").addEventListener("click", loadTelemetry);
}

const hourLabel = (iso, long) => {
  const d = new Date(iso);
  return long ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + d.getHours() + "h" : `${d.getHours()}:00`;
};

async function loadTelemetry() {
  const hours = Number($("t-range").value);
  const q = `line=${encodeURIComponent(S.line)}&hours=${hours}`;
  const bucket = hours > 72 ? "day" : "hour";
  const [en, fa, dr, sh] = await Promise.all([
    api(`/api/telemetry/energy?${q}&bucket=${bucket}`), api(`/api/telemetry/faults?${q}`),
    api(`/api/telemetry/defect-rate?${q}`), api(`/api/telemetry/shifts?${q}`)]);
  const labels = en.items.map((p) => bucket === "day" ? new Date(p.ts).toLocaleDateString() : hourLabel(p.ts, hours > 24));
  barChart($("ch-energy"), labels, [{ label: "kWh", values: en.items.map((p) => p.kwh), color: COLORS.blue }], { unit: "kWh" });
  lineChart($("ch-energy-part"), labels, [{ label: "Wh / good part", values: en.items.map((p) => p.kwh_per_good_part === null ? null : p.kwh_per_good_part * 1000), color: COLORS.purple }], { unit: "Wh" });
  barChart($("ch-faults"), fa.items.map((f) => f.device), [
    { label: "downtime (min)", values: fa.items.map((f) => f.downtime_s / 60), color: COLORS.red },
    { label: "faults", values: fa.items.map((f) => f.faults), color: COLORS.amber }]);
  barChart($("ch-defects"), dr.items.map((r) => r.cls), [{ label: "% of parts", values: dr.items.map((r) => r.rate * 100), color: COLORS.red }], { unit: "%" });
  const sl = sh.items.map((s) => `${s.day.slice(5)} ${s.shift}`);
  barChart($("ch-shift-reject"), sl, [{ label: "reject %", values: sh.items.map((s) => s.reject_rate === null ? null : s.reject_rate * 100), color: COLORS.red }], { unit: "%" });
  barChart($("ch-shift-energy"), sl, [{ label: "Wh / good part", values: sh.items.map((s) => s.kwh_per_good_part === null ? null : s.kwh_per_good_part * 1000), color: COLORS.blue }], { unit: "Wh" });
  $("shift-table").innerHTML = `<thead><tr><th>Day</th><th>Shift</th><th>Parts</th><th>Rejects</th><th>Reject rate</th>
    <th>kWh</th><th>Wh / good part</th><th>Faults</th><th>Downtime</th></tr></thead><tbody>` +
    sh.items.map((s) => `<tr><td>${esc(s.day)}</td><td>${esc(s.shift)}</td><td>${s.parts}</td><td>${s.rejects}</td>
      <td>${s.reject_rate === null ? "–" : fmtNum(s.reject_rate * 100, 1) + " %"}</td><td>${fmtNum(s.kwh, 3)}</td>
      <td>${s.kwh_per_good_part === null ? "–" : fmtNum(s.kwh_per_good_part * 1000, 2)}</td><td>${s.faults}</td><td>${fmtNum(s.downtime_s / 60, 1)} min</td></tr>`).join("") +
    "</tbody>";
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
  $("a-request").addEventListener("click", async () => {
    const lang = $("a-lang").value;
    $("a-status").textContent = AGENT_TXT[lang].asking;
    try {
      await api("/api/summaries", { method: "POST", body: { line: S.line, hours: Number($("a-hours").value), lang } });
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
const CMD_TEXT = {
  stop: "Stop the conveyor now?", start: "Start the conveyor? The PLC refuses while the e-stop or guard door is active.",
  "reset-rejects": "Reset the PLC reject counter to zero?",
};

export function initControl(session) {
  S = session;
  loaders.control = loadControl;
  if (wired) return;
  const send = async (cmd, extra = {}) => {
    const text = cmd === "slow" ? `Set the conveyor speed to ${extra.speed_pct} %?` : CMD_TEXT[cmd];
    const ok = await confirmDialog(`Confirm: ${cmd}`, text, cmd === "stop" ? "Stop line" : "Confirm");
    if (!ok) return;
    const out = $("cmd-result");
    try {
      const r = await api(`/api/commands/${cmd}`, { method: "POST", headers: { "Idempotency-Key": newKey() },
        body: { confirm: true, line: S.line, reason: ok.reason, ...extra } });
      out.className = "ok";
      out.textContent = `${cmd}: done. Line is ${r.state_after?.state ?? "unknown"}.`;
    } catch (e) {
      out.className = "bad";
      out.textContent = `${cmd} refused: ${e.message}`;
    }
    const { pollState } = await import("./app.js");
    pollState();
    loadControl();
  };
  $("cmd-stop").addEventListener("click", () => send("stop"));
  $("cmd-start").addEventListener("click", () => send("start"));
  $("cmd-reset").addEventListener("click", () => send("reset-rejects"));
  $("cmd-slow").addEventListener("click", () => send("slow", { speed_pct: Number($("slow-pct").value) }));
}

async function loadControl() {
  const can = S.me.can;
  if (can.override) {
    const [page, all] = await Promise.all([api(`/api/inspections?line=${encodeURIComponent(S.line)}&limit=8`),
      verdicts()]);  // the verdicts an override may choose: the server's contract, not a list here
    $("override-table").innerHTML = `<thead><tr><th>Time</th><th>Part</th><th>Camera</th><th>Defects</th><th>Decision</th><th>Override</th></tr></thead><tbody>` +
      page.items.map((i) => `<tr><td>${esc(fmtTime(i.ts))}</td><td>${esc(i.part_id)}</td><td>${esc(i.camera)}</td>
        <td>${esc(i.classes.join(", ") || "–")}</td><td><span class="badge ${esc(i.override || i.decision)}">${esc(i.override || i.decision)}</span></td>
        <td>${all.filter((d) => d !== (i.override || i.decision)).map((d) =>
          `<button class="small" data-ovid="${esc(i.inspection_id)}" data-ovto="${esc(d)}">${esc(d)}</button>`).join(" ")}</td></tr>`).join("") + "</tbody>";
    for (const b of $("override-table").querySelectorAll("button[data-ovid]")) {
      b.addEventListener("click", async () => {
        const ok = await confirmDialog("Override decision", `Override inspection ${b.dataset.ovid} to "${b.dataset.ovto}"?`, b.dataset.ovto);
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
    const a = await api("/api/audit?limit=25");
    $("audit-table").innerHTML = `<thead><tr><th>Time</th><th>Who</th><th>Action</th><th>Target</th><th>Before</th><th>After</th><th>Result</th></tr></thead><tbody>` +
      a.items.map((r) => `<tr><td>${esc(fmtTime(r.ts))}</td><td>${esc(r.actor)} <span class="muted">${esc(r.role)}</span></td>
        <td>${esc(r.action)}</td><td>${esc(r.target)}</td><td class="json">${esc(brief(r.before))}</td>
        <td class="json">${esc(brief(r.after))}</td><td><span class="badge ${r.result === "ok" ? "pass" : "reject"}">${esc(r.result)}</span>
        ${r.detail?.reason ? `<div class="muted">${esc(r.detail.reason)}</div>` : ""}</td></tr>`).join("") + "</tbody>";
  }
}

function brief(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "object" && !Array.isArray(v) && "state" in v) {
    return `${v.state}${v.speed_pct != null ? ` ${v.speed_pct}%` : ""}${v.estop ? " e-stop" : ""}${v.guard_door ? " door open" : ""}`;
  }
  const s = JSON.stringify(v);
  return s.length > 80 ? s.slice(0, 77) + "…" : s;
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
