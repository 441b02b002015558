// People: API tokens for admins (create with a role, list, revoke) over POST/GET/DELETE /api/tokens.
import { api, esc, fmtTime } from "./api.js";
import { confirmDialog } from "./ui.js";

const $ = (id) => document.getElementById(id);
let wired = false;

export function initPeople() {
  if (wired) return;
  wired = true;
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const box = $("token-made");
    try {
      const t = await api("/api/tokens", { method: "POST", body: { name: f.get("name"), role: f.get("role") } });
      box.hidden = false;
      box.className = "token-made ok";
      box.innerHTML = `Token for <b>${esc(t.name)}</b> (${esc(t.role)}), shown once:
        <code id="token-value">${esc(t.token)}</code> <button type="button" class="small" id="token-copy">Copy</button>`;
      $("token-copy").addEventListener("click", () => navigator.clipboard?.writeText(t.token));
      e.target.reset();
    } catch (err) {
      box.hidden = false;
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
    <th>Created</th><th>By</th><th>Status</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>` +
    (list.map((t) => `<tr data-token="${t.token_id}"><td><b>${esc(t.name)}</b></td><td><span class="role role-${esc(t.role)}">${esc(t.role)}</span></td>
      <td>${esc(fmtTime(t.created_at))}</td><td>${esc(t.created_by)}</td>
      <td>${t.revoked_at ? `<span class="badge reject">revoked</span> <span class="muted">${esc(fmtTime(t.revoked_at))}</span>` : '<span class="badge pass">active</span>'}</td>
      <td>${t.revoked_at ? "" : `<button type="button" class="small danger" data-revoke="${t.token_id}">Revoke</button>`}</td></tr>`).join("")
      || '<tr><td colspan="6" class="muted">No tokens.</td></tr>') + "</tbody>";
  for (const b of $("token-table").querySelectorAll("button[data-revoke]")) {
    const t = list.find((x) => String(x.token_id) === b.dataset.revoke);
    b.addEventListener("click", async () => {
      const ok = await confirmDialog(`Revoke token “${t.name}”`,
        `Revoke the ${t.role} token “${t.name}”? Whoever uses it is signed out within seconds.`,
        `Revoke ${t.name}`, { tone: "danger" });
      if (!ok) return;
      try { await api(`/api/tokens/${t.token_id}`, { method: "DELETE" }); } catch (e) { $("token-made").textContent = e.message; }
      loadPeople();
    });
  }
}
