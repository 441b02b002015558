// Dialogs and line commands shared by the overview, the header and the control tab.
import { actorText, api, atLeast, esc, fmtNum, fmtTime, newKey } from "./api.js";
import { changed, lineStore, session, store } from "./state.js";

const $ = (id) => document.getElementById(id);

// title, text, okLabel, tone: "danger" (stop) or "primary" (anything that is not destructive).
export function confirmDialog(title, text, okLabel = "Confirm", { tone = "primary", reasonLabel } = {}) {
  return new Promise((resolve) => {
    const dlg = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    $("confirm-ok").className = tone;
    $("confirm-reason-label").textContent = reasonLabel || "Reason (for the audit trail)";
    $("confirm-reason").value = "";
    dlg.returnValue = "";
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? { reason: $("confirm-reason").value } : null),
      { once: true });
    dlg.showModal();
    $("confirm-reason").focus();
  });
}

const CMD = {
  stop: { verb: "Stop", ok: (l) => `Stop ${l}`, text: (l) => `Stop line ${l} now? The conveyor stops; parts in the machine stay where they are.` },
  start: { verb: "Start", ok: (l) => `Start ${l}`, text: (l) => `Start line ${l}? The PLC refuses while the e-stop or guard door is active.` },
  slow: { verb: "Set speed of", ok: (l, x) => `Set ${l} to ${x.speed_pct} %`, text: (l, x) => `Set the conveyor speed of line ${l} to ${x.speed_pct} %?` },
  "reset-rejects": { verb: "Reset reject counter of", ok: (l) => `Reset counter of ${l}`, text: (l) => `Reset the PLC reject counter of line ${l} to zero?` },
};

// Whether a command makes sense now, and why not: by role, by the line's state, by the server being there.
export function commandAllowed(line, cmd) {
  const me = session.me;
  if (!me || !me.can[`command:${cmd}`]) return [false, "your role may not do this"];
  if (store.stale) return [false, "the server is not answering"];
  const ls = lineStore(line);
  const st = ls.state;
  if (!st || Date.now() - ls.stateAt > 7000) return [false, "line state not known"];
  const s = st.state;
  if (cmd === "stop") return s === "stopped" ? [false, "the line is already stopped"] : [true, ""];
  if (cmd === "start") {
    if (s === "running") return [false, "the line is already running"];
    if (s === "unknown") return [false, "line state unknown (PLC link?)"];
    if (st.estop) return [false, "e-stop active"];
    if (st.guard_door) return [false, "guard door open"];
    return [true, ""];
  }
  if (cmd === "slow") return s === "running" ? [true, ""] : [false, "the line is not running"];
  if (cmd === "reset-rejects") return s === "unknown" ? [false, "line state unknown"] : [true, ""];
  return [false, "unknown command"];
}

export async function sendCommand(line, cmd, extra = {}) {
  const c = CMD[cmd];
  const ok = await confirmDialog(`${c.verb} line ${line}`, c.text(line, extra), c.ok(line, extra), { tone: cmd === "stop" ? "danger" : "primary" });
  if (!ok) return null;
  let out;
  try {
    const r = await api(`/api/commands/${cmd}`, { method: "POST", headers: { "Idempotency-Key": newKey() },
      body: { confirm: true, line, reason: ok.reason, ...extra } });
    out = { ok: true, text: `${cmd} ${line}: done. Line is ${r.state_after?.state ?? "unknown"}.` };
  } catch (e) {
    out = { ok: false, text: `${cmd} ${line} refused: ${e.message}` };
  }
  changed({ command: cmd, line, result: out });
  return out;
}

// "stopped by alice: shift end · 12:03" from a line state's cause.
export function causeText(cause) {
  if (!cause) return "";
  const what = { start: "started", stop: "stopped", slow: "slowed", safe_state: "safe state", estop: "e-stop",
    guard_door: "guard door opened", stopped_at_plc: "stopped at the PLC" }[cause.action] || cause.action;
  return `${what} by ${actorText(cause.actor)}${cause.reason ? `: ${cause.reason}` : ""} · ${fmtTime(cause.ts)}`;
}

export function canAck() { return atLeast(session.me, "supervisor"); }

export function sevBadge(sev) {
  return `<span class="sev sev-${esc(sev)}">${esc(sev)}</span>`;
}

export function speedText(st) {
  // A running line whose setpoint lineguard never wrote reads 0: say so instead of "0 %".
  const sp = st.speed_pct;
  const actual = st.inputs?.actual_speed;
  if (sp === null || sp === undefined) return "–";
  const act = actual !== undefined && actual !== null ? ` (actual ${fmtNum(actual, 0)} %)` : "";
  if (st.state === "running" && !sp) return actual ? `no setpoint${act}` : "no setpoint (PLC runs at nominal)";
  return `${fmtNum(sp, 0)} %${act}`;
}

export { esc, fmtNum };
