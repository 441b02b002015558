// Alarms: rule stops, safe states, PLC link and camera loss, reject-rate and energy thresholds (derived by the
// server from the audit trail, the readiness checks and the line's thresholds). They are pushed: the live stream
// (GET /api/live/events) starts with the active list (`alarms`) and then sends each change (`alarm`: raised,
// acknowledged, cleared, updated); GET /api/alarms is read only while the stream is down (app.js). A supervisor
// acknowledges with a note and clears latched ones; both are audited.
import { actorText, api, esc, fmtTime } from "./api.js";
import { changed, onChange, store } from "./state.js";
import { canAck, confirmDialog, sevBadge } from "./ui.js";

const $ = (id) => document.getElementById(id);
let S = null;
let wired = false;

export function initAlarms(session) {
  S = session;
  const sel = $("al-line");
  sel.replaceChildren(new Option("all lines", ""), ...session.me.lines.map((l) => new Option(l, l)));
  if (wired) return;
  wired = true;
  $("al-state").addEventListener("change", () => renderTable(true));
  $("al-line").addEventListener("change", () => renderTable(true));
  onChange((what) => {
    // Redraw only when something changed: a redraw every poll would take the keyboard focus off the buttons.
    const sig = JSON.stringify([store.alarms.via, store.alarms.items.map((a) => [a.alarm_id, a.acked_at, a.cleared_at, a.reason])]);
    if (what === "alarms" && !$("tab-alarms").hidden && sig !== renderTable.sig) { renderTable.sig = sig; renderTable(false); }
  });
}

// The active list, for the header count and the overview: the fallback while the live stream is down.
export async function loadAlarms() {
  applyAlarmPage(await api("/api/alarms?state=active&limit=200"), "poll");
}

// The whole active list, as the stream sends it when it (re)connects or as GET /api/alarms answers.
export function applyAlarmPage(page, via = "push") {
  store.alarms = { items: page.items, unacked: page.unacked, active: page.active, at: Date.now(), via };
  changed("alarms");
}

const SEV = { critical: 0, high: 1, medium: 2, low: 3 };
function listed(a) { return !a.cleared_at || !a.acked_at; }  // the active list: not yet both cleared and acknowledged

// One pushed change: {line, change: raised | acknowledged | cleared | updated, alarm}.
export function applyAlarmChange(d) {
  const a = d.alarm;
  if (!a) return;
  const items = store.alarms.items.filter((x) => x.alarm_id !== a.alarm_id);
  const old = store.alarms.items.find((x) => x.alarm_id === a.alarm_id);
  // A change that crossed a newer list on the way never takes an acknowledgement or a clear back.
  const merged = old ? { ...a, ...(old.acked_at && !a.acked_at ? { acked_at: old.acked_at, acked_by: old.acked_by,
    ack_note: old.ack_note } : {}), ...(old.cleared_at && !a.cleared_at ? { cleared_at: old.cleared_at,
    cleared_by: old.cleared_by, active: false } : {}) } : a;
  if (listed(merged)) items.push(merged);
  items.sort((x, y) => (!!x.cleared_at - !!y.cleared_at) || (SEV[x.severity] - SEV[y.severity]) ||
    (Date.parse(y.raised_at) - Date.parse(x.raised_at)));
  const capped = items.length >= 200;  // beyond the list the server sent: keep its counts moving by the change
  store.alarms = {
    items,
    unacked: capped ? store.alarms.unacked + (old ? (!old.acked_at && merged.acked_at ? -1 : 0) : (merged.acked_at ? 0 : 1))
      : items.filter((x) => !x.acked_at).length,
    active: capped ? store.alarms.active + (old ? (old.active && !merged.active ? -1 : 0) : (merged.active ? 1 : 0))
      : items.filter((x) => x.active).length,
    at: Date.now(), via: "push", last: { change: d.change, alarm_id: a.alarm_id, at: Date.now() },
  };
  changed("alarms");
  if (!$("tab-alarms").hidden && $("al-state").value === "all") renderTable(true).catch(() => {});
}

export async function showAlarms() {
  await renderTable(true);
}

async function renderTable(fetchHistory) {
  const state = $("al-state").value;
  const line = $("al-line").value;
  let items = store.alarms.items;
  if (state === "all") {
    if (!fetchHistory && renderTable.last) items = renderTable.last;
    else {
      const q = new URLSearchParams({ state: "all", limit: 200 });
      if (line) q.set("line", line);
      items = (await api(`/api/alarms?${q}`)).items;
      renderTable.last = items;
    }
  }
  if (line) items = items.filter((a) => a.line === line);
  const ack = canAck();
  $("al-summary").textContent = `${store.alarms.unacked} unacknowledged · ${store.alarms.active} active` +
    (store.alarms.via === "poll" ? " · live stream down: read every few seconds" : " · live") +
    (ack ? "" : " · acknowledging needs a supervisor");
  $("alarm-table").innerHTML = `<caption class="sr-only">Alarms</caption><thead><tr><th>Severity</th><th>Line</th>
    <th>Alarm</th><th>Raised</th><th>By</th><th>State</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>` +
    (items.map((a) => `<tr data-alarm="${a.alarm_id}" data-kind="${esc(a.kind)}" class="${a.active ? "active" : "cleared"}">
      <td>${sevBadge(a.severity)}</td><td>${esc(a.line)}</td>
      <td><b>${esc(a.title)}</b><div class="reason">${esc(a.reason)}</div></td>
      <td>${esc(fmtTime(a.raised_at))}</td><td>${esc(actorText(a.source))}<div class="muted">${esc(a.source)}</div></td>
      <td>${a.active ? '<span class="badge reject">active</span>' : `<span class="badge">cleared</span> <span class="muted">${esc(a.cleared_by)} ${esc(fmtTime(a.cleared_at))}</span>`}
        ${a.acked_at ? `<div class="muted">acknowledged by ${esc(a.acked_by)} ${esc(fmtTime(a.acked_at))}${a.ack_note ? `: “${esc(a.ack_note)}”` : ""}</div>` : '<div><span class="badge rework">unacknowledged</span></div>'}</td>
      <td class="nowrap">${ack && !a.acked_at ? `<button type="button" class="small primary" data-ack="${a.alarm_id}">Acknowledge</button>` : ""}
        ${ack && a.active && a.latched ? `<button type="button" class="small" data-clear="${a.alarm_id}">Clear</button>` : ""}</td></tr>`).join("")
      || '<tr><td colspan="7" class="muted">No alarms.</td></tr>') + "</tbody>";
  for (const b of $("alarm-table").querySelectorAll("button[data-ack], button[data-clear]")) {
    b.addEventListener("click", () => act(items.find((a) => String(a.alarm_id) === (b.dataset.ack || b.dataset.clear)),
      b.dataset.ack ? "ack" : "clear"));
  }
}

async function act(a, what) {
  const verb = what === "ack" ? "Acknowledge" : "Clear";
  const ok = await confirmDialog(`${verb} alarm on line ${a.line}`,
    `${verb} “${a.title}” on line ${a.line}${a.reason ? ` (${a.reason})` : ""}?`, `${verb} alarm`,
    { tone: "primary", reasonLabel: "Note (kept with the alarm and in the audit trail)" });
  if (!ok) return;
  try {
    await api(`/api/alarms/${a.alarm_id}/${what}`, { method: "POST", body: { note: ok.reason } });
    $("al-summary").textContent = `${verb}d: ${a.title}`;
  } catch (e) {
    $("al-summary").textContent = `${verb} refused: ${e.message}`;
  }
  await loadAlarms();
  await renderTable(true);
}
