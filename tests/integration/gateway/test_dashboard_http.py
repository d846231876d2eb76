"""/dashboard over HTTP: off by default, its assets come from the package, its state is JSON
and sits behind the API keys when tenants are on."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def _get(url: str, key: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def test_dashboard_is_off_unless_enabled(harness) -> None:
    server = harness.standin()
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [server.url]}]})
    status, ctype, body = _get(gw.url + "/dashboard")
    assert status == 404 and ctype.startswith("application/json")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert _get(gw.url + "/dashboard/state")[0] == 404


def test_dashboard_pages_and_state_behind_keys(harness, tmp_path, web) -> None:
    server = harness.standin()
    secret = "sk-dash-0123456789abcdef"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(json.dumps({"tenants": [{"name": "ops", "key": secret}]}))
    gw = harness.gateway({"tenants": str(tenants), "dashboard": True,
                          "pools": [{"model": "m", "endpoints": [server.url]}]})
    status, ctype, page = _get(gw.url + "/dashboard")
    assert status == 200 and ctype.startswith("text/html")
    for asset in (b"/dashboard/static/dashboard.js", b"/dashboard/static/dashboard.css"):
        assert asset in page
        status, _, body = _get(gw.url + asset.decode())
        assert status == 200 and body
    assert b"http://" not in page and b"https://" not in page  # nothing from elsewhere
    assert _get(gw.url + "/dashboard/static/../app.py")[0] == 404
    assert _get(gw.url + "/dashboard/static/nope.js")[0] == 404
    status, _, body = _get(gw.url + "/dashboard/state")
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert _get(gw.url + "/dashboard/state", "sk-wrong-000000000000")[0] == 401
    req = urllib.request.Request(
        gw.url + "/v1/completions", method="POST",
        data=json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    # the router accounts the request just after its last byte: wait for that state
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, body = _get(gw.url + "/dashboard/state", secret)
        assert status == 200
        state = json.loads(body)
        if sum(state["series"]["requests_per_s"]):
            break
    (pool,) = state["pools"]
    assert pool["name"] == "m" and pool["replicas"][0]["endpoint"] == server.url[7:]
    (decision,) = state["recent"]
    assert decision["endpoint"] == server.url[7:] and decision["model"] == "m"
    assert set(decision["scores"]) >= {"prefix-cache-scorer", "queue-scorer"}
    assert sum(state["series"]["requests_per_s"]) * state["series"]["step"] == 1
