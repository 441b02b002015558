// People: API tokens for admins (create with a role and the lines it may act on, list, revoke) over
// POST/GET/DELETE /api/tokens. The lines offered are the ones the server says this admin may see (/api/login).
import { api, esc, fmtTime } from "./api.js";
import { confirmDialog } from "./ui.js";

const $ = (id) => document.getElementById(id);
let wired = false;
let S = null;

function linesText(lines) {
  return lines ? lines.join(", ") : "every line";
}

function renderPicker() {
  const me = S.me;
  const all = $("token-lines").querySelector("[name=all_lines]");
  // An admin limited to lines can only hand out tokens within them: "every line" is not theirs to give.
  all.checked = me.all_lines !== false;
  all.disabled = me.all_lines === false;
  all.closest("label").hidden = me.all_lines === false;
  $("token-line-boxes").innerHTML = me.lines.map((l) =>
    `<label><input type="checkbox" name="lines" value="${esc(l)}"> ${esc(l)}</label>`).join(" ");
  syncPicker();
}

function syncPicker() {
  const all = $("token-lines").querySelector("[name=all_lines]");
  for (const b of $("token-line-boxes").querySelectorAll("input")) b.disabled = all.checked && !all.disabled;
}

export function initPeople(session) {
  S = session;
  renderPicker();
  if (wired) return;
  wired = true;
  $("token-lines").querySelector("[name=all_lines]").addEventListener("change", syncPicker);
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const box = $("token-made");
    const every = f.get("all_lines") === "1";
    const lines = every ? null : f.getAll("lines");
    box.hidden = false;
    if (!every && !lines.length) {
      box.className = "token-made bad";
      box.textContent = "Not created: pick the lines the token may act on, or every line.";
      return;
    }
    try {
      const t = await api("/api/tokens", { method: "POST", body: { name: f.get("name"), role: f.get("role"), lines } });
      box.className = "token-made ok";
      box.innerHTML = `Token for <b>${esc(t.name)}</b> (${esc(t.role)}, ${esc(linesText(t.lines))}), shown once:
        <code id="token-value">${esc(t.token)}</code> <button type="button" class="small" id="token-copy">Copy</button>`;
      $("token-copy").addEventListener("click", () => navigator.clipboard?.writeText(t.token));
      e.target.reset();
      renderPicker();
    } catch (err) {
      box.className = "token-made bad";
      box.textContent = `Not created: ${err.message}`;
    }
    loadPeople();
  });
  $("tok-revoked").addEventListener("change", loadPeople);
}

export async function loadPeople() {
  const rows = await api("/api/tokens");
  const show = $("tok-revoked").checked;
  const list = rows.filter((t) => show || !t.revoked_at).reverse();
  $("token-table").innerHTML = `<caption class="sr-only">API tokens</caption><thead><tr><th>Name</th><th>Role</th>
    <th>Lines</th><th>Created</th><th>By</th><th>Status</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>` +
    (list.map((t) => `<tr data-token="${t.token_id}"><td><b>${esc(t.name)}</b></td><td><span class="role role-${esc(t.role)}">${esc(t.role)}</span></td>
      <td class="tok-lines">${t.lines ? esc(linesText(t.lines)) : '<span class="muted">every line</span>'}</td>
      <td>${esc(fmtTime(t.created_at))}</td><td>${esc(t.created_by)}</td>
      <td>${t.revoked_at ? `<span class="badge reject">revoked</span> <span class="muted">${esc(fmtTime(t.revoked_at))}</span>` : '<span class="badge pass">active</span>'}</td>
      <td>${t.revoked_at ? "" : `<button type="button" class="small danger" data-revoke="${t.token_id}">Revoke</button>`}</td></tr>`).join("")
      || '<tr><td colspan="7" class="muted">No tokens.</td></tr>') + "</tbody>";
  for (const b of $("token-table").querySelectorAll("button[data-revoke]")) {
    const t = list.find((x) => String(x.token_id) === b.dataset.revoke);
    b.addEventListener("click", async () => {
      const ok = await confirmDialog(`Revoke token “${t.name}”`,
        `Revoke the ${t.role} token “${t.name}” (${linesText(t.lines)})? Whoever uses it is signed out within seconds.`,
        `Revoke ${t.name}`, { tone: "danger" });
      if (!ok) return;
      try { await api(`/api/tokens/${t.token_id}`, { method: "DELETE" }); } catch (e) { $("token-made").textContent = e.message; }
      loadPeople();
    });
  }
}
