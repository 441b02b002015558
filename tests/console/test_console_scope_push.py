"""The console in Chromium (Playwright): alarms pushed over the live stream, the gallery's model-decision and
overridden filters, and a token scoped to one line from the People tab to its refusal and revocation.

The single-line tests use test_console.py's running line (real API, PostgreSQL, the Modbus simulator, a feeder
playing the runtime); the scoped-token test runs a two-line server over the same real services. Screenshots go to
test-artifacts/console/.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from api_support import LINE, ServerThread, controller_factory, make_tokens, seed_inspections, write_frame
from test_console import ARGS, ARTIFACTS, CHROMIUM, _as_rule, _login, _page, _shot, _wait
from test_console import console as console

from line_agent.api.app import create_app
from line_agent.api.deps import ApiDeps
from line_agent.live import LiveHub
from line_agent.store.migrate import migrate

pytestmark = pytest.mark.browser
OTHER = "line2"
_FETCH_STATUS = """async (path) => {
  const r = await fetch(path, {headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('lineguard.token')}});
  return [r.status, (await r.json()).detail];
}"""


def _alarm_reads(page: Any) -> list[str]:
    """Every GET /api/alarms the page makes from now on (the fallback poll, if it ran)."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/api/alarms" in r.url and r.method == "GET" else None)
    return seen


def test_rule_stop_alarm_is_pushed_not_polled(console: dict[str, Any]) -> None:
    c = console
    if c["sim"] is None:
        pytest.skip("needs the PLC simulator (hardware/)")
    sup = _page(c)
    _login(sup, c["url"], c["tokens"]["supervisor"], "alarms")
    sup.wait_for_selector("#alarm-badge[data-via=push]", timeout=15000)  # the stream delivered the list
    other = _page(c)
    _login(other, c["url"], c["tokens"]["supervisor"], "alarms")
    other.wait_for_selector("#alarm-badge[data-via=push]", timeout=15000)
    time.sleep(1.0)  # past the sign-in's one read
    reads = _alarm_reads(sup)
    before = int(sup.text_content("#alarm-count") or "0")

    reason = "stop rule: 4 rejects in 10 parts"
    t0 = time.monotonic()
    _as_rule(c, lambda ctl: ctl.stop(reason=reason))  # audited by the controller's AuditWriter, as on the line
    row = "#alarm-table tr[data-kind=rule_stop]"
    sup.wait_for_selector(row, timeout=4000)
    took = time.monotonic() - t0
    # Within 2 s (about 1 s here, under load), half the fallback poll's 4 s, and no poll ran at all: it came over
    # the stream.
    assert took < 2.0, took
    assert reads == [], reads
    assert reason in (sup.text_content(row) or "")
    _wait(sup, f"Number(document.getElementById('alarm-count').textContent) === {before + 1}", 2000)
    assert "live" in (sup.text_content("#al-summary") or "")
    _shot(sup, "16-alarm-pushed")

    # Acknowledged in another console: this one shows it without a reload or a read.
    aid = sup.get_attribute(row, "data-alarm")
    other.wait_for_selector(f"#alarm-table tr[data-alarm='{aid}'] button[data-ack]", timeout=4000)
    other.click(f"#alarm-table tr[data-alarm='{aid}'] button[data-ack]")
    other.wait_for_selector("#confirm[open]")
    other.fill("#confirm-reason", "jam cleared")
    t1 = time.monotonic()
    other.click("#confirm-ok")
    _wait(sup, f"(document.querySelector(\"#alarm-table tr[data-alarm='{aid}']\")?.textContent || '')"
               ".includes('acknowledged by test-supervisor')", 4000)
    assert time.monotonic() - t1 < 3.0
    _wait(sup, f"Number(document.getElementById('alarm-count').textContent) === {before}", 2000)
    assert reads == [], reads
    _shot(sup, "17-alarm-ack-pushed")
    assert c["external"] == [], c["external"]


def test_gallery_finds_an_overridden_reject(console: dict[str, Any]) -> None:
    c = console
    import httpx

    # insp-0000 is a reject the model made (seed_inspections); an operator overrides it to pass.
    r = httpx.post(f"{c['url']}/api/inspections/insp-0000/override",
                   json={"confirm": True, "decision": "pass", "reason": "board fine on a second look"},
                   headers={"Authorization": f"Bearer {c['tokens']['operator']}"})
    assert r.status_code == 200, r.text
    page = _page(c)
    _login(page, c["url"], c["tokens"]["operator"], "review")
    f = "#gallery-filter"
    page.wait_for_selector("#gallery .thumb")
    _wait(page, f"document.querySelectorAll('{f} [name=model_decision] option').length > 1")

    def show(**sel: str) -> list[str]:
        for name in ("decision", "model_decision", "overridden", "cls"):
            page.select_option(f"{f} [name={name}]", sel.get(name, ""))
        shown = page.get_attribute("#gallery-count", "data-n") or ""  # before the click: the load may be quick
        page.click(f"{f} button[type=submit]")
        # A newer load, made with these filters (not one still in flight from before).
        page.wait_for_function("""([n, want]) => {
            const el = document.getElementById('gallery-count');
            const q = new URLSearchParams(el.dataset.q || '');
            return el.dataset.n !== n && ['decision', 'model_decision', 'overridden', 'cls']
              .every((k) => (q.get(k) || '') === (want[k] || ''));
          }""", arg=[shown, sel], timeout=8000)
        return [str(x) for x in page.eval_on_selector_all("#gallery .thumb", "els => els.map((e) => e.dataset.id)")]

    # Class "open": the seeded rejects insp-0000 and insp-0009 only (the feeder's rejects are shorts).
    # In force insp-0000 is a pass now: not among the rejects.
    assert show(decision="reject", cls="open") == ["insp-0009"]
    # Overridden: found (and only overridden parts are shown).
    ids = show(overridden="true")
    assert ids == ["insp-0000"], ids
    tile = "#gallery .thumb[data-id='insp-0000']"
    assert "reject → pass" in (page.text_content(tile) or "")
    _shot(page, "18-gallery-overridden")
    # By the model's own decision it is still a reject.
    assert show(model_decision="reject", cls="open") == ["insp-0000", "insp-0009"]
    _shot(page, "19-gallery-model-decision")
    # Both: the model's reject a person passed.
    assert show(model_decision="reject", overridden="true", decision="pass") == ["insp-0000"]
    assert show(model_decision="pass", overridden="true") == []
    assert c["external"] == [], c["external"]


# ---- a token for one line -----------------------------------------------------------------------------------
@pytest.fixture
def two_lines(fresh_db: str, sim: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    migrate(fresh_db)
    tokens = make_tokens(fresh_db)
    frames = tmp_path / "frames"
    seed_inspections(fresh_db, frames)
    now = datetime.now(UTC)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for i in range(4):
            ts = now - timedelta(minutes=2 * i)
            write_frame(frames, OTHER, "cam-7", f"l2-{i}", ts.timestamp())
            conn.execute("INSERT INTO inspections (inspection_id, ts, line, camera, part_id, decision, n_defects,"
                         " latency_ms, model) VALUES (%s,%s,%s,'cam-7',%s,'pass',0,9.0,'pcb:v1')",
                         (f"l2-{i}", ts, OTHER, f"Q-{i}"))
    deps = ApiDeps(database_url=fresh_db, lines=[LINE, OTHER], hub=LiveHub(), frames_dir=frames,
                   training_dir=tmp_path / "training", model_registry=tmp_path / "models", pool_max=6)
    app = create_app(deps, controller_factory=controller_factory(sim))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ServerThread(app) as srv, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield {"url": srv.url, "tokens": tokens, "browser": browser, "external": [], "db": fresh_db}
        finally:
            browser.close()


def test_token_scoped_to_one_line(two_lines: dict[str, Any]) -> None:
    c = two_lines
    admin = _page(c)
    _login(admin, c["url"], c["tokens"]["admin"], "people")
    admin.wait_for_selector("#token-table tbody tr[data-token]")
    # The lines offered are the server's.
    boxes = admin.eval_on_selector_all("#token-line-boxes input", "els => els.map((e) => e.value)")
    assert boxes == [LINE, OTHER]
    admin.fill("#token-form [name=name]", "erin (line 2)")
    admin.select_option("#token-form [name=role]", "supervisor")
    admin.uncheck("#token-form [name=all_lines]")
    admin.check(f"#token-line-boxes input[value='{OTHER}']")
    admin.click("#token-form button[type=submit]")
    admin.wait_for_selector("#token-value")
    token = admin.text_content("#token-value") or ""
    assert token.startswith("lg_") and f"{OTHER}" in (admin.text_content("#token-made") or "")
    row = admin.locator("#token-table tr", has_text="erin (line 2)")
    row.wait_for()
    assert (row.locator(".tok-lines").text_content() or "").strip() == OTHER
    assert "every line" in (admin.locator("#token-table tr", has_text="test-viewer").text_content() or "")
    _shot(admin, "20-people-lines")

    erin = _page(c)
    _login(erin, c["url"], token, "review")
    assert erin.text_content("#who-lines") == f"only {OTHER}"
    assert erin.eval_on_selector_all("#line-select option", "els => els.map((e) => e.value)") == [OTHER]
    # The gallery holds only line2's parts.
    erin.wait_for_selector("#gallery .thumb")
    ids = erin.eval_on_selector_all("#gallery .thumb", "els => els.map((e) => e.dataset.id)")
    assert ids and all(str(i).startswith("l2-") for i in ids), ids
    erin.click("#tabs button[data-tab=overview]")
    erin.wait_for_selector(f".line-card[data-line='{OTHER}']")
    assert erin.locator(f".line-card[data-line='{LINE}']").count() == 0
    _shot(erin, "21-scoped-console")
    # The other line is refused, and says why.
    status, detail = erin.evaluate(_FETCH_STATUS, f"/api/line/state?line={LINE}")
    assert status == 403 and f"limited to line {OTHER}" in detail, detail
    status, _ = erin.evaluate(_FETCH_STATUS, "/api/inspections/insp-0000")
    assert status == 403
    stop = erin.evaluate(
        """async ([line, key]) => (await fetch('/api/commands/stop', {method: 'POST', headers: {
             'Authorization': 'Bearer ' + sessionStorage.getItem('lineguard.token'),
             'Content-Type': 'application/json', 'Idempotency-Key': key},
             body: JSON.stringify({confirm: true, line})})).status""", [LINE, uuid.uuid4().hex])
    assert stop == 403
    assert erin.evaluate(_FETCH_STATUS, f"/api/line/state?line={OTHER}")[0] == 200

    # Revoked: erin's console is signed out at its next request, and the token no longer signs in.
    tid = row.get_attribute("data-token")
    admin.click(f"#token-table tr[data-token='{tid}'] button[data-revoke]")
    admin.wait_for_selector("#confirm[open]")
    assert OTHER in (admin.text_content("#confirm-text") or "")
    admin.click("#confirm-ok")
    _wait(admin, f"!document.querySelector(\"#token-table tr[data-token='{tid}']\")")
    erin.wait_for_selector("#login:not([hidden])", timeout=15000)
    erin.fill("#login-token", token)
    erin.click("#login-form button[type=submit]")
    _wait(erin, "document.getElementById('login-error').textContent.includes('revoked')")
    assert c["external"] == [], c["external"]


def test_alarms_fall_back_to_polling_while_the_stream_is_down(console: dict[str, Any]) -> None:
    c = console
    if c["sim"] is None:
        pytest.skip("needs the PLC simulator (hardware/)")
    page = _page(c)
    page.route("**/api/live/events*", lambda route: route.abort())  # a proxy that drops the stream
    reads = _alarm_reads(page)
    _login(page, c["url"], c["tokens"]["viewer"], "alarms")
    page.wait_for_selector("#alarm-badge[data-via=poll]", timeout=10000)
    assert "live stream down" in (page.get_attribute("#alarm-badge", "title") or "")
    reason = "stop rule: stream-down check"
    _as_rule(c, lambda ctl: ctl.stop(reason=reason))
    page.wait_for_selector("#alarm-table tr[data-kind=rule_stop]", timeout=12000)  # by the fallback poll
    assert reason in (page.text_content("#alarm-table tr[data-kind=rule_stop]") or "")
    assert len(reads) >= 2, reads
    assert "live stream down" in (page.text_content("#al-summary") or "")
    _shot(page, "22-alarms-polled-stream-down")
    assert [u for u in c["external"] if "live/events" not in u] == [], c["external"]
