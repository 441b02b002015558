// Shared console state: the session, what each line last looked like and when, the alarms. Views subscribe.
export const session = { me: null, line: "", stopStream: null, streamUp: false };
export const STALE_MS = 5000;        // the server said nothing for this long: everything is stale
export const STATE_STALE_MS = 7000;  // a line's state not refreshed for this long: that line is stale
export const CAMERA_STALE_S = 10;    // a running line's camera without a frame for this long: camera stale
export const NODES_STALE_MS = 15000; // the Sparkplug list not refreshed for this long: shown stale

export const store = { lines: {}, alarms: { items: [], unacked: 0, active: 0, at: 0 }, stale: false, staleSince: 0 };

export function lineStore(line) {
  if (!store.lines[line]) {
    store.lines[line] = { state: null, stateAt: 0, counters: null, countersAt: 0, targets: null, rate: null,
      rateAt: 0, frames: {}, nodes: [], nodesAt: 0, nodesStaleAfter: 300 };
  }
  return store.lines[line];
}

const subs = new Set();
export function onChange(fn) { subs.add(fn); }
export function changed(what) {
  for (const fn of subs) {
    try { fn(what); } catch (e) { console.warn("view update failed", e); }
  }
}
