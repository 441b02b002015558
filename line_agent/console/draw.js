// Drawing a frame with its boxes and class labels on a <canvas> (live view and label editor).
// A colour per verdict. Which verdicts exist is the server's word (verdicts() in api.js, GET /api/contracts);
// a verdict without a colour here is drawn grey.
export const DECISION_COLOR = { pass: "#1f9d55", reject: "#d64545", rework: "#d99a00" };
const UNKNOWN_COLOR = "#555";

export function decisionColor(verdict) {
  return DECISION_COLOR[verdict] || UNKNOWN_COLOR;
}

export function drawDetections(canvas, img, boxes, decision, selected = -1) {
  // Drawn at the image's own resolution; CSS scales the canvas to fit. Returns the drawing scale (1).
  canvas.width = img.width;
  canvas.height = img.height;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const fs = Math.max(12, Math.round(img.width / 45));
  g.font = `bold ${fs}px system-ui, sans-serif`;
  boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b.box;
    const color = i === selected ? "#2f6fdf" : "#ff3b30";
    g.lineWidth = Math.max(2, Math.round(img.width / 300)) * (i === selected ? 1.5 : 1);
    g.strokeStyle = color;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${b.cls}${b.confidence !== undefined ? " " + (b.confidence * 100).toFixed(0) + "%" : ""}`;
    const tw = g.measureText(label).width + 8;
    const th = fs + 6;
    const ty = y1 > th ? y1 - th : y2;
    g.fillStyle = color;
    g.fillRect(x1, ty, tw, th);
    g.fillStyle = "#fff";
    g.fillText(label, x1 + 4, ty + fs);
  });
  if (decision) {
    const t = decision.toUpperCase();
    g.font = `bold ${fs + 2}px system-ui, sans-serif`;
    g.fillStyle = decisionColor(decision);
    g.fillRect(0, 0, g.measureText(t).width + 16, fs + 12);
    g.fillStyle = "#fff";
    g.fillText(t, 8, fs + 4);
  }
  canvas.dataset.decision = decision || "";
  return 1;
}
