// Charts on uPlot (vendored in ./vendor, MIT; no network): time series on a real time axis with missing buckets
// drawn as gaps, a unit on every axis, drag-to-zoom (double-click resets), stop and alarm markers, and bars by
// category with one axis per unit. Each chart's container says what it shows (aria-label, data-* attributes).
import uPlot from "./vendor/uPlot.esm.js";

export const COLORS = { blue: "#2f6fdf", green: "#1f9d55", red: "#c62828", amber: "#b7791f", grey: "#5f6b7a",
  purple: "#7e3fc4", teal: "#00838f" };
const AXIS = { stroke: "#4a5566", grid: { stroke: "#e6e9ef", width: 1 }, ticks: { stroke: "#d0d5dd", width: 1 } };
const charts = new Map();

export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 10000) return (v / 1000).toFixed(0) + "k";
  if (a >= 1000) return (v / 1000).toFixed(1) + "k";
  if (a >= 10) return v.toFixed(0);
  if (a >= 1) return String(Number(v.toFixed(1)));
  return String(Number(v.toPrecision(2)));
}

function sizeOf(target) {
  return { width: Math.max(260, Math.floor(target.clientWidth || target.parentElement?.clientWidth || 520)), height: 230 };
}

function place(target, opts, data) {
  const old = charts.get(target.id);
  if (old) old.destroy();
  target.replaceChildren();
  const u = new uPlot(opts, data, target);
  charts.set(target.id, u);
  return u;
}

export function empty(target, msg = "No data in this range") {
  const old = charts.get(target.id);
  if (old) { old.destroy(); charts.delete(target.id); }
  target.replaceChildren();
  const p = document.createElement("p");
  p.className = "muted empty";
  p.textContent = msg;
  target.append(p);
  target.dataset.points = "0";
}

// Every bucket from `since` to `until`, with null where the API returned none: a gap, not a joined line.
export function buckets(sinceIso, untilIso, widthS, rows, tsKey = "ts") {
  const t0 = Math.floor(Date.parse(sinceIso) / 1000 / widthS) * widthS;
  const t1 = Date.parse(untilIso) / 1000;
  // A bucket is keyed by its start; the first one may start at `since` itself, not on the grid.
  const byT = new Map(rows.map((r) => [Math.floor(Date.parse(r[tsKey]) / 1000 / widthS) * widthS, r]));
  const xs = [];
  const out = [];
  for (let t = t0; t <= t1; t += widthS) { xs.push(t); out.push(byT.get(t) || null); }
  return [xs, out];
}

function gapsOf(values) {
  let gaps = 0, inGap = false, seen = false;
  for (const v of values) {
    if (v === null || v === undefined) { if (seen && !inGap) { gaps++; inGap = true; } }
    else { seen = true; inGap = false; }
  }
  return gaps;
}

function markerHook(markers) {
  return (u) => {
    const { ctx, bbox } = u;
    ctx.save();
    for (const m of markers) {
      const x = Math.round(u.valToPos(m.ts, "x", true));
      if (x < bbox.left || x > bbox.left + bbox.width) continue;
      ctx.strokeStyle = m.color;
      ctx.lineWidth = 2 * devicePixelRatio;
      ctx.setLineDash(m.kind === "stop" ? [] : [6 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  };
}

// xs: epoch seconds; series: [{label, unit, values, color, bars?}] (one unit per chart, or `unit2` on a 2nd axis).
export function timeChart(target, xs, series, { title = "", markers = [] } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (!xs.length || !all.length) return empty(target);
  const units = [...new Set(series.map((s) => s.unit))];
  const scaleOf = (s) => (s.unit === units[0] ? "y" : "y2");
  const opts = {
    ...sizeOf(target),
    title: "",
    cursor: { sync: { key: "lineguard-time" }, drag: { x: true, y: false } },
    legend: { live: true },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [Math.min(0, lo ?? 0), hi > 0 ? hi * 1.1 : 1] },
      y2: { range: (u, lo, hi) => [Math.min(0, lo ?? 0), hi > 0 ? hi * 1.1 : 1] } },
    axes: [
      { ...AXIS, label: "time (local)", labelSize: 18 },
      { ...AXIS, scale: "y", label: units[0], labelSize: 18, size: 56, values: (u, vs) => vs.map(fmt) },
      ...(units[1] ? [{ ...AXIS, scale: "y2", side: 1, label: units[1], labelSize: 18, size: 56, grid: { show: false },
        values: (u, vs) => vs.map(fmt) }] : []),
    ],
    series: [{ label: "time" }, ...series.map((s) => ({
      label: `${s.label} (${s.unit})`, stroke: s.color, width: 2, scale: scaleOf(s), spanGaps: false,
      fill: s.bars ? s.color + "cc" : s.color + "22",
      paths: s.bars ? uPlot.paths.bars({ size: [0.8, 60], align: 1 }) : undefined,
      points: { show: !s.bars, size: 4 },
      value: (u, v) => (v === null || v === undefined ? "no data" : `${fmt(v)} ${s.unit}`),
    }))],
    hooks: { draw: [markerHook(markers)] },
  };
  const u = place(target, opts, [xs, ...series.map((s) => s.values)]);
  target.dataset.xMin = String(xs[0]);
  target.dataset.xMax = String(xs[xs.length - 1]);
  target.dataset.points = String(all.length);
  target.dataset.gaps = String(Math.max(...series.map((s) => gapsOf(s.values))));
  target.dataset.units = units.join(",");
  target.dataset.markers = String(markers.filter((m) => m.ts >= xs[0] && m.ts <= xs[xs.length - 1]).length);
  target.setAttribute("role", "img");
  target.setAttribute("aria-label", `${title}: ${series.map((s) => `${s.label} in ${s.unit}`).join(", ")}, ` +
    `${new Date(xs[0] * 1000).toLocaleString()} to ${new Date(xs[xs.length - 1] * 1000).toLocaleString()}, ` +
    `${all.length} values, ${target.dataset.gaps} gap(s), ${target.dataset.markers} marker(s)`);
  return u;
}

// Bars by category. series: [{label, unit, values, color}]; a second unit gets its own axis on the right.
export function barChart(target, labels, series, { title = "" } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (!labels.length || !all.length) return empty(target);
  const units = [...new Set(series.map((s) => s.unit))];
  const n = series.length;
  const xs = labels.map((_, i) => i);
  const opts = {
    ...sizeOf(target),
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    scales: { x: { time: false, range: () => [-0.5, labels.length - 0.5] },
      y: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.15 : 1] }, y2: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.15 : 1] } },
    axes: [
      { ...AXIS, splits: () => xs, values: (u, vs) => vs.map((v) => labels[v] ?? ""), grid: { show: false },
        size: 40, gap: 4 },
      { ...AXIS, scale: "y", label: units[0], labelSize: 18, size: 52, values: (u, vs) => vs.map(fmt) },
      ...(units[1] ? [{ ...AXIS, scale: "y2", side: 1, label: units[1], labelSize: 18, size: 52,
        grid: { show: false }, values: (u, vs) => vs.map(fmt) }] : []),
    ],
    series: [{ label: "", value: (u, v) => (v === null || v === undefined ? "" : labels[v] ?? "") },
      ...series.map((s, j) => ({
        label: `${s.label} (${s.unit})`, stroke: s.color, fill: s.color + "cc", width: 1,
        scale: s.unit === units[0] ? "y" : "y2", points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7 / n, 80], align: n === 1 ? 0 : j === 0 ? -1 : 1 }),
        value: (u, v) => (v === null || v === undefined ? "–" : `${fmt(v)} ${s.unit}`),
      }))],
  };
  place(target, opts, [xs, ...series.map((s) => s.values)]);
  target.dataset.points = String(all.length);
  target.dataset.units = units.join(",");
  target.setAttribute("role", "img");
  target.setAttribute("aria-label", `${title}: ` + labels.map((l, i) =>
    `${l}: ${series.map((s) => `${fmt(s.values[i])} ${s.unit}`).join(", ")}`).join("; "));
}

window.addEventListener("resize", () => {
  for (const [id, u] of charts) {
    const el = document.getElementById(id);
    if (el && el.clientWidth) u.setSize(sizeOf(el));
  }
});
