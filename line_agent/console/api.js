// The console's only way to the server: same-origin fetch with the bearer token. No external request.
const KEY = "lineguard.token";

export const auth = {
  get token() { return sessionStorage.getItem(KEY) || ""; },
  set token(v) { if (v) sessionStorage.setItem(KEY, v); else sessionStorage.removeItem(KEY); },
};

// When the server last answered anything (a response of any status, or bytes on the live stream). The console
// greys out and says "stale since ..." when this gets old: a killed server must never look like a running line.
export const link = { lastContact: 0, listeners: new Set() };
export function touch() {
  link.lastContact = Date.now();
}

export class ApiError extends Error {
  constructor(status, detail, body) { super(detail); this.status = status; this.body = body; }
}

function detailOf(body, status) {
  if (!body) return `HTTP ${status}`;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  if (body.reason) return body.reason;
  return `HTTP ${status}`;
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const h = { Authorization: `Bearer ${auth.token}`, ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  touch();
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    if (r.status === 401) window.dispatchEvent(new CustomEvent("lineguard:unauthorized"));
    throw new ApiError(r.status, detailOf(data, r.status), data);
  }
  return data;
}

// The message contracts (GET /api/contracts: line_agent.contracts.contract_schemas()), fetched once per page.
// The verdict list (pass / rework / reject) is the server's: the console never spells it out itself.
let contractsOnce = null;
export function contracts() {
  if (!contractsOnce) contractsOnce = api("/api/contracts").catch((e) => { contractsOnce = null; throw e; });
  return contractsOnce;
}

export async function verdicts() {
  return (await contracts()).verdicts;
}

export async function apiBlob(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${auth.token}` } });
  if (!r.ok) throw new ApiError(r.status, `HTTP ${r.status}`, null);
  return r.blob();
}

export function newKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on a plain-http factory LAN too.
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header). Reconnects with backoff.
export function stream(path, onEvent, onStatus = () => {}) {
  let stopped = false;
  let ctrl = null;
  let delay = 500;
  async function run() {
    while (!stopped) {
      try {
        ctrl = new AbortController();
        const r = await fetch(path, { headers: { Authorization: `Bearer ${auth.token}` }, signal: ctrl.signal });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        touch();
        onStatus(true);
        delay = 500;
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          touch();
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let kind = "message";
            const data = [];
            for (const line of chunk.split("\n")) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trim());
            }
            if (data.length) {
              try { onEvent(kind, JSON.parse(data.join("\n"))); } catch (e) { console.warn("bad event", e); }
            }
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      onStatus(false);
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }
  run();
  return () => { stopped = true; if (ctrl) ctrl.abort(); };
}

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(typeof iso === "number" ? iso * 1000 : iso);
  return d.toLocaleString(undefined, { month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function fmtClock(ms) {
  if (!ms) return "–";
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function fmtAge(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const ROLE_RANK = { viewer: 0, operator: 1, supervisor: 2, admin: 3 };
export function atLeast(me, role) {
  return (ROLE_RANK[me?.role] ?? -1) >= ROLE_RANK[role];
}

// Who caused a line state, in words: user:<name>, runtime:<line> (a rule), plc:<line> (seen at the PLC).
export function actorText(actor) {
  const a = String(actor || "");
  if (a.startsWith("user:")) return a.slice(5);
  if (a.startsWith("runtime:")) return "lineguard (automatic rule)";
  if (a.startsWith("plc:")) return "the PLC / machine";
  if (a.startsWith("demo:")) return "demo operator";
  return a || "unknown";
}

export function fmtNum(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits });
}
