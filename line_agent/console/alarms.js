// Alarms: rule stops, safe states, PLC link and camera loss, reject-rate and energy thresholds (GET /api/alarms,
// derived by the server from the audit trail, the readiness checks and the line's thresholds). A supervisor
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
    const sig = JSON.stringify(store.alarms.items.map((a) => [a.alarm_id, a.acked_at, a.cleared_at, a.reason]));
    if (what === "alarms" && !$("tab-alarms").hidden && sig !== renderTable.sig) { renderTable.sig = sig; renderTable(false); }
  });
}

// The active list, for the header count and the overview (every few seconds).
export async function loadAlarms() {
  const page = await api("/api/alarms?state=active&limit=200");
  store.alarms = { items: page.items, unacked: page.unacked, active: page.active, at: Date.now() };
  changed("alarms");
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
