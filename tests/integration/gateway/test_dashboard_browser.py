"""/dashboard in a real browser: headless Debian chromium driven by selenium loads the page in
front of `inferoute sim`, checks the numbers it shows against the gateway's and the replicas'
/metrics, and chats through the gateway, reading the streamed reply.

Skips, saying why, without chromium, chromedriver (Debian: `apt-get install chromium
chromium-driver`) or selenium (the `test` extra). Set INFEROUTE_DASHBOARD_SCREENSHOT=PATH to
keep a screenshot (docs/dashboard.png is made that way).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from inferoute.procs import free_port_range

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[test]')")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("chromium / chromedriver not on PATH (Debian: apt-get install -y chromium "
                "chromium-driver)", allow_module_level=True)

from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

#: the tiny profile at 1/40 speed: a decode step takes tens of milliseconds, so a long stream
#: holds a replica's running count still while the page is read
TIME_SCALE = "40"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not fetch drivers: ours are given
    opts = Options()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1400,1100",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER,
                                              log_output=str(tmp_path / "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


#: what the page shows, read in one script run (the page redraws every second)
READ_PAGE = """
const rows = {};
for (const tr of document.querySelectorAll("table.replicas tr[data-endpoint]")) {
  const cells = {};
  for (const td of tr.querySelectorAll("td[data-field]"))
    cells[td.dataset.field] = td.dataset.value ?? td.textContent;
  rows[tr.dataset.endpoint] = cells;
}
const text = (sel) => document.querySelector(sel)?.textContent ?? null;
return {
  rows,
  ready: text("[data-field=ready]"),
  desired: text("[data-field=desired]"),
  queued: text("[data-field=queued]"),
  reserved: text("[data-field=reserved]"),
  recent: [...document.querySelectorAll("#recent tbody tr")].map((tr) => ({
    endpoint: tr.querySelector("[data-field=endpoint]").textContent,
    scores: tr.querySelector("[data-field=scores]").textContent})),
  throughputLines: document.querySelectorAll("#chart-throughput polyline").length,
  updated: Number(document.body.dataset.updated || 0),
};
"""


def _page(driver) -> dict:
    return driver.execute_script(READ_PAGE)


def _chat(browser, wait, text: str) -> None:
    """Send `text` from the chat box and wait for a streamed reply (two chunks at least)."""
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-model option"))
    browser.find_element(By.ID, "chat-input").send_keys(text)
    browser.find_element(By.ID, "chat-send").click()
    reply = wait.until(lambda d: (d.find_elements(By.CSS_SELECTOR, "#chat-log .assistant")
                                  or [None])[-1])
    wait.until(lambda d: reply.get_attribute("data-done") == "true")
    assert "error" not in (reply.get_attribute("class") or ""), reply.text
    assert int(reply.get_attribute("data-chunks")) >= 2 and reply.text.strip()


def test_dashboard_in_chromium(harness, web, browser, tmp_path: Path) -> None:
    base = free_port_range(2)
    harness.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                   "--replicas", "2", "--profile", "tiny", "--time-scale", TIME_SCALE], base)
    sims = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    harness.procs[-1].wait_for_http(sims[1] + "/health")
    gw = harness.gateway({"dashboard": True, "autoscaling": {"ttftTarget": "1s"},
                          "pools": [{"model": "sim-model", "endpoints": sims,
                                     "scheduler": "llm-d"}],  # the page shows its scorers
                          "admission": {"objectives": [{"name": "critical", "priority": 10}]}})
    prompt = "the quick brown fox jumps over the lazy dog " * 12
    for _ in range(4):  # the same prefix: later requests hit the replica's prefix cache
        r = web.post(gw.url + "/v1/completions", json={"model": "sim-model", "prompt": prompt,
                                                        "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
    # a long stream keeps one replica running while the page is checked
    conn, stream = web.open_stream(gw.url + "/v1/completions", {
        "model": "sim-model", "prompt": "tell me a long story", "max_tokens": 600,
        "stream": True, "ignore_eos": True})
    try:
        assert stream.status == 200
        busy = stream.getheader("x-gateway-destination-endpoint-served")
        assert stream.readline()  # streaming: it is running on `busy`

        browser.get(gw.url + "/dashboard")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        # the page's state: the busy replica running the stream, seen by the scrape and the
        # router, and the five routed requests listed
        def settled(d):  # the busy replica running the stream, five requests listed
            shown = _page(d)
            cells = shown["rows"].get(busy, {})
            ok = cells.get("running") == "1" and cells.get("in_flight") == "1" \
                and len(shown["recent"]) == 5
            return shown if ok else None

        wait.until(settled)
        # /metrics, then a page drawn from a state built after it, then /metrics again: the
        # page's numbers lie between the two (KV use only grows while the stream decodes)
        before = web.get(gw.url + "/metrics").text
        fetched = time.time()
        def redrawn(d):  # from a state built after `before`
            shown = _page(d)
            return shown if shown["updated"] > fetched else None

        shown = wait.until(redrawn)
        page = web.get(gw.url + "/metrics").text
        rows = shown["rows"]
        assert set(rows) == {s[7:] for s in sims}
        for ep, cells in rows.items():
            labels = {"pool": "sim-model", "endpoint": ep}
            for field, metric in (("waiting", "inferoute_endpoint_waiting_requests"),
                                  ("running", "inferoute_endpoint_running_requests"),
                                  ("in_flight", "inferoute_endpoint_in_flight_requests")):
                assert float(cells[field]) == web.metric(before, metric, **labels) \
                    == web.metric(page, metric, **labels), (ep, field)
            assert cells["health"] == "ready"
            assert web.metric(page, "inferoute_endpoint_ready", **labels) == 1
            kv = "inferoute_endpoint_kv_cache_utilization"
            assert web.metric(before, kv, **labels) <= float(cells["kv"]) \
                <= web.metric(page, kv, **labels), (ep, cells["kv"])
            # the prefix-cache hit rate is the replica's own counters' ratio
            own = web.get(f"http://{ep}/metrics").text
            hits = web.metric(own, "vllm:prefix_cache_hits_total")
            queries = web.metric(own, "vllm:prefix_cache_queries_total")
            if queries:
                assert float(cells["prefix_hit_rate"]) == pytest.approx(hits / queries)
            else:  # a replica no request has reached yet
                assert cells["prefix_hit_rate"] == "null"
        # some replica has hits (a replica no request reached shows "null")
        assert any(c["prefix_hit_rate"] != "null" and float(c["prefix_hit_rate"]) > 0
                   for c in rows.values())
        ready_line = 'inference_pool_ready_pods{name="sim-model"} '
        (ready,) = [ln[len(ready_line):] for ln in page.splitlines()
                    if ln.startswith(ready_line)]
        assert float(shown["ready"]) == float(ready) == 2
        assert int(shown["desired"]) >= 1
        # admission's own figures: nothing waits in the gateway, the reserve as exported
        pool = {"inference_pool": "sim-model"}
        assert float(shown["queued"]) == web.metric(
            page, "inference_extension_flow_control_queue_size", priority="all", **pool) == 0
        assert float(shown["reserved"]) == web.metric(
            page, "inferoute_flow_control_reserved_slots", **pool)
        newest = shown["recent"][0]
        assert newest["endpoint"] == busy
        assert "prefix-cache-scorer" in newest["scores"] and "queue-scorer" in newest["scores"]
        assert shown["throughputLines"] == 2  # requests/s and tokens/s, four requests finished
    finally:
        conn.close()

    # the chat box streams a reply through the gateway
    _chat(browser, wait, "Hello, who are you?")
    state = json.loads(web.get(gw.url + "/dashboard/state").text)
    assert state["recent"][0]["model"] == "sim-model"
    assert state["pools"][0]["estimate"]["measured"]  # the gauge's terms, shown on the page
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    keep = os.environ.get("INFEROUTE_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copy(tmp_path / "dashboard.png", keep)


def test_dashboard_sign_in_in_chromium(harness, browser, tmp_path: Path) -> None:
    """With tenants on the page is a sign-in form until a key is posted; then the page, its
    live state and the chat box work on the session cookie, which the page's script cannot
    read; signing out brings the form back."""
    secret = "sk-browser-0123456789abcdef"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(json.dumps({"tenants": [{"name": "ops", "key": secret}]}))
    sims = harness.sim(1)
    gw = harness.gateway({"tenants": str(tenants), "dashboard": True,
                          "pools": [{"model": "sim-model", "endpoints": sims}]})
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(gw.url + "/dashboard")
    assert browser.find_elements(By.ID, "login-form") and not browser.find_elements(By.ID, "pools")
    browser.find_element(By.ID, "api-key").send_keys("sk-not-the-key-000")
    browser.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.ID, "login-error"))
    browser.find_element(By.ID, "api-key").send_keys(secret)
    browser.find_element(By.ID, "login").click()
    # the page, drawn from the state it polls with the cookie alone
    wait.until(lambda d: (_page(d)["rows"].keys() == {sims[0][7:]}) or None)
    assert browser.current_url == gw.url + "/dashboard"  # the key is in no URL
    assert browser.find_element(By.ID, "signed-in-as").text == "ops"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and secret not in cookie["value"]
    _chat(browser, wait, "Hello there")
    browser.find_element(By.CSS_SELECTOR, "#logout-form button").click()
    wait.until(lambda d: d.find_elements(By.ID, "login-form"))
    assert not browser.get_cookies()


def test_the_kv_fit_release_is_shown_in_chromium(harness, web, browser) -> None:
    """A pool of the `inferoute` policy: the page shows whether its KV-fit release holds and
    the recompute share it measured, as /metrics exports them."""
    base = free_port_range(1)
    harness.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                   "--profile", "tiny"], base)
    gw = harness.gateway({"dashboard": True, "pools": [
        {"model": "sim-model", "endpoints": [f"http://127.0.0.1:{base}"],
         "scheduler": "inferoute"}]})
    family = " ".join(f"w{k:02d}" for k in range(200))  # one prompt family's prefix
    ratio = None
    for i in range(50):  # until a returning request's usage has measured it
        r = web.post(gw.url + "/v1/completions", json={
            "model": "sim-model", "prompt": f"{family} q{i:02d}", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
        page = web.get(gw.url + "/metrics").text
        ratio = web.metric(page, "inferoute_pool_prefix_recompute_ratio", name="sim-model")
        if ratio is not None:
            break
    assert ratio == 0.0  # its prefix was found cached every time
    assert web.metric(page, "inferoute_pool_kv_fit_holding", name="sim-model") == 0
    browser.get(gw.url + "/dashboard")
    shown = WebDriverWait(browser, 60, poll_frequency=0.2).until(
        lambda d: d.execute_script(
            "const h = document.querySelector('[data-field=kv_fit_holding]');"
            "const s = document.querySelector('[data-field=recompute_share]');"
            "return h && s ? [h.textContent, s.dataset.value, s.textContent] : null;"))
    assert shown[0] == "not holding" and float(shown[1]) == ratio, shown
    assert "recomputed 0.0%" in shown[2], shown
