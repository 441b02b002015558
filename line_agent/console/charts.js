// Small SVG charts written for the console: bars, grouped bars and lines. No library, no network.
const NS = "http://www.w3.org/2000/svg";
const W = 560, H = 220, PAD = { l: 52, r: 12, t: 12, b: 44 };

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function frame(target, maxY, unit) {
  target.replaceChildren();
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "svgchart" });
  const ih = H - PAD.t - PAD.b;
  for (let i = 0; i <= 4; i++) {
    const y = PAD.t + ih - (ih * i) / 4;
    svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }));
    svg.append(el("text", { x: PAD.l - 6, y: y + 4, class: "axis", "text-anchor": "end" },
      fmt((maxY * i) / 4)));
  }
  target.append(svg);
  return svg;
}

function fmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
  if (Math.abs(v) >= 10) return v.toFixed(0);
  if (Math.abs(v) >= 1) return String(Number(v.toFixed(1)));
  return String(Number(v.toPrecision(2)));
}

function empty(target, msg = "No data in this range") {
  target.replaceChildren();
  const p = document.createElement("p");
  p.className = "muted empty";
  p.textContent = msg;
  target.append(p);
}

// series: [{label, values: number[], color}], labels: x labels
export function barChart(target, labels, series, { unit = "", title = "" } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (!labels.length || !all.length) return empty(target);
  const maxY = niceMax(Math.max(...all));
  const svg = frame(target, maxY, unit);
  if (title) svg.append(el("title", {}, title));
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
  const slot = iw / labels.length;
  const bw = Math.max(2, (slot * 0.8) / series.length);
  const every = Math.ceil(labels.length / 12);
  labels.forEach((lab, i) => {
    series.forEach((s, j) => {
      const v = s.values[i];
      if (v === null || v === undefined) return;
      const h = (ih * v) / maxY;
      const x = PAD.l + i * slot + slot * 0.1 + j * bw;
      const r = el("rect", { x, y: PAD.t + ih - h, width: bw - 1, height: Math.max(0, h), fill: s.color, class: "bar" });
      r.append(el("title", {}, `${lab} · ${s.label}: ${fmt(v)}${unit ? " " + unit : ""}`));
      svg.append(r);
    });
    if (i % every === 0) {
      svg.append(el("text", { x: PAD.l + i * slot + slot / 2, y: H - PAD.b + 16, class: "axis", "text-anchor": "middle" }, lab));
    }
  });
  legend(svg, series);
}

export function lineChart(target, labels, series, { unit = "" } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (!labels.length || !all.length) return empty(target);
  const maxY = niceMax(Math.max(...all));
  const svg = frame(target, maxY, unit);
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
  const x = (i) => PAD.l + (labels.length === 1 ? iw / 2 : (iw * i) / (labels.length - 1));
  const every = Math.ceil(labels.length / 10);
  labels.forEach((lab, i) => {
    if (i % every === 0) svg.append(el("text", { x: x(i), y: H - PAD.b + 16, class: "axis", "text-anchor": "middle" }, lab));
  });
  for (const s of series) {
    let d = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      d += `${d ? "L" : "M"}${x(i).toFixed(1)},${(PAD.t + ih - (ih * v) / maxY).toFixed(1)}`;
      const c = el("circle", { cx: x(i), cy: PAD.t + ih - (ih * v) / maxY, r: 2.5, fill: s.color });
      c.append(el("title", {}, `${labels[i]} · ${s.label}: ${fmt(v)}${unit ? " " + unit : ""}`));
      svg.append(c);
    });
    svg.append(el("path", { d, stroke: s.color, fill: "none", "stroke-width": 2 }));
  }
  legend(svg, series);
}

function legend(svg, series) {
  if (series.length < 2) return;
  let x = PAD.l;
  for (const s of series) {
    svg.append(el("rect", { x, y: H - 16, width: 10, height: 10, fill: s.color }));
    svg.append(el("text", { x: x + 14, y: H - 7, class: "axis" }, s.label));
    x += 24 + s.label.length * 7;
  }
}

export const COLORS = { blue: "#2f6fdf", green: "#1f9d55", red: "#d64545", amber: "#d99a00", grey: "#7a8599", purple: "#8a4fd8" };
