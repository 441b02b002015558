// The audit trail: filters (people / system, action, line, time), paging, rows a person can read, per-part PLC
// writes folded into one row per hour (GET /api/audit?group=true).
import { actorText, api, esc, fmtTime } from "./api.js";

const $ = (id) => document.getElementById(id);
let S = null;
let wired = false;
const au = { offset: 0, limit: 50, total: 0 };
export const loaders = {};

const ACTION_TEXT = {
  "command.stop": "stopped the line", "command.start": "started the line", "command.slow": "set the speed",
  "command.reset-rejects": "reset the reject counter", "plc.stop": "PLC write: stop", "plc.start": "PLC write: start",
  "plc.slow": "PLC write: speed", "plc.reject_part": "PLC write: reject gate", "plc.reset_rejects": "PLC write: reset counter",
  "line.safe_state": "line went to its safe state", "line.estop": "e-stop pressed", "line.guard_door": "guard door opened",
  "line.stopped_at_plc": "line stopped at the PLC", "alarm.ack": "acknowledged an alarm", "alarm.clear": "cleared an alarm",
  "decision.override": "overrode a decision", "inspection.override": "overrode an inspection",
  "decision.reject_gate": "reject gate failed", "labels.save": "sent labels to the training set",
  "token.create": "created a token", "token.revoke": "revoked a token", "targets.set": "changed the line's targets",
};

export function initAudit(session) {
  S = session;
  const sel = document.querySelector("#audit-filter [name=line]");
  sel.replaceChildren(new Option("any", ""), ...session.me.lines.map((l) => new Option(l, l)));
  if (wired) return;
  wired = true;
  $("audit-filter").addEventListener("submit", (e) => { e.preventDefault(); au.offset = 0; loadAudit(); });
  $("au-prev").addEventListener("click", () => { au.offset = Math.max(0, au.offset - au.limit); loadAudit(); });
  $("au-next").addEventListener("click", () => { if (au.offset + au.limit < au.total) { au.offset += au.limit; loadAudit(); } });
}

export function auditQuery(form, extra = {}) {
  const f = new FormData(form);
  const q = new URLSearchParams({ limit: au.limit, offset: au.offset, ...extra });
  for (const k of ["who", "action", "line"]) if (f.get(k)) q.set(k, f.get(k));
  for (const k of ["since", "until"]) if (f.get(k)) q.set(k, new Date(f.get(k)).toISOString());
  if (f.get("group")) q.set("group", "true");
  return q;
}

export async function loadAudit() {
  const page = await api(`/api/audit?${auditQuery($("audit-filter"))}`);
  au.total = page.total;
  $("audit-count").textContent = `${page.total} entr${page.total === 1 ? "y" : "ies"}`;
  $("au-page").textContent = page.total ? `${au.offset + 1}–${Math.min(au.offset + au.limit, page.total)} of ${page.total}` : "";
  $("au-prev").disabled = au.offset === 0;
  $("au-next").disabled = au.offset + au.limit >= page.total;
  $("audit-full").innerHTML = auditTable(page.items);
}

export function auditTable(items) {
  return `<caption class="sr-only">Audit trail</caption><thead><tr><th>Time</th><th>Who</th><th>What</th><th>Target</th>
    <th>Change</th><th>Result</th></tr></thead><tbody>` + (items.map(row).join("")
    || '<tr><td colspan="6" class="muted">Nothing matches these filters.</td></tr>') + "</tbody>";
}

function isPerson(r) {
  return ["viewer", "operator", "supervisor", "admin"].includes(r.role) || String(r.actor).startsWith("user:");
}

function row(r) {
  const person = isPerson(r);
  const what = ACTION_TEXT[r.action] || r.action;
  const d = r.detail || {};
  const why = d.reason || d.note || "";
  const when = r.count > 1 ? `${fmtTime(r.first_ts)} – ${fmtTime(r.ts)}` : fmtTime(r.ts);
  const grouped = r.count > 1 ? ` <span class="badge ov">${r.count} parts</span>` : "";
  return `<tr data-action="${esc(r.action)}" class="${person ? "person" : "system"}">
    <td class="nowrap">${esc(when)}</td>
    <td>${esc(person ? actorText(r.actor) : actorText(r.actor))} <span class="role-tag ${person ? "p" : "s"}">${person ? esc(r.role || "person") : "system"}</span></td>
    <td><b>${esc(what)}</b>${grouped}<div class="muted code">${esc(r.action)}</div>${why ? `<div class="reason">“${esc(why)}”</div>` : ""}</td>
    <td>${esc(r.target || d.line || "")}</td>
    <td>${change(r)}</td>
    <td><span class="badge ${r.result === "ok" ? "pass" : "reject"}">${esc(r.result)}</span>
      ${r.before !== null || r.after !== null || Object.keys(d).length ? `<details><summary>details</summary><pre>${esc(JSON.stringify({ before: r.before, after: r.after, detail: d }, null, 2))}</pre></details>` : ""}</td></tr>`;
}

function brief(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object" && !Array.isArray(v)) {
    if ("state" in v) return `${v.state}${v.speed_pct ? ` ${v.speed_pct} %` : ""}${v.estop ? ", e-stop" : ""}${v.guard_door ? ", door open" : ""}`;
    if ("tag" in v) return `${v.tag} = ${JSON.stringify(v.value)}`;
    return Object.entries(v).filter(([, x]) => typeof x !== "object" || x === null)
      .map(([k, x]) => `${k}: ${x}`).join(", ");
  }
  return String(v);
}

function change(r) {
  const b = brief(r.before), a = brief(r.after);
  if (!b && !a) return '<span class="muted">–</span>';
  return `${b ? `${esc(b)} → ` : ""}${esc(a)}`;
}
