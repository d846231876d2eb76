"""/dashboard over HTTP: off by default, its assets come from the package, its state is JSON;
with tenants on, the page wants a signed-in session (a key posted once from its form) and the
state that or the API's key, and the key never reaches a URL, a cookie or a log."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request


def _get(url: str, key: str | None = None, cookie: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})
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


def _post_form(url: str, fields: dict[str, str], headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    """POST a form without following redirects: (status, lower-case headers, body)."""
    host, _, path = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("POST", "/" + path, body=urllib.parse.urlencode(fields),
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _sign_in(url: str, key: str) -> tuple[str, str]:
    """The session cookie ('name=token') and the Set-Cookie header of a good sign-in."""
    status, headers, _ = _post_form(url + "/dashboard/login", {"key": key})
    assert status == 303 and headers["location"] == "/dashboard", (status, headers)
    set_cookie = headers["set-cookie"]
    return set_cookie.split(";", 1)[0], set_cookie


def test_dashboard_pages_and_state_behind_keys(harness, tmp_path, web) -> None:
    server = harness.standin()
    secret = "sk-dash-0123456789abcdef"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(json.dumps({"tenants": [{"name": "ops", "key": secret}]}))
    gw = harness.gateway({"tenants": str(tenants), "dashboard": True,  # llm-d: named scorers
                          "pools": [{"model": "m", "endpoints": [server.url],
                                     "scheduler": "llm-d"}]},
                         flags=("--log-level", "info", "--access-log"))
    # without a session: the sign-in form (401), not the page; the rest 401 in JSON
    status, ctype, page = _get(gw.url + "/dashboard")
    assert status == 401 and ctype.startswith("text/html")
    assert b'action="/dashboard/login"' in page and b'method="post"' in page
    assert b"dashboard.js" not in page and b'id="pools"' not in page
    for path in ("/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css",
                 "/dashboard/state"):
        status, ctype, body = _get(gw.url + path)
        assert status == 401 and ctype.startswith("application/json"), path
        assert json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = _get(gw.url + "/dashboard/state")
    assert json.loads(body)["error"]["code"] == "missing_api_key"
    assert _get(gw.url + "/dashboard/state", "sk-wrong-000000000000")[0] == 401
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert web.post(gw.url + "/dashboard/chat", json=chat).status_code == 401

    # a wrong key: the form again, with no cookie; a post from another site: 403
    status, headers, body = _post_form(gw.url + "/dashboard/login", {"key": "sk-wrong-0000000"})
    assert status == 401 and "set-cookie" not in headers and b"login-error" in body
    status, headers, body = _post_form(gw.url + "/dashboard/login", {"key": secret},
                                       {"Origin": "http://evil.example"})
    assert status == 403 and "set-cookie" not in headers
    assert json.loads(body)["error"]["code"] == "cross_origin_post"

    # the right key: a session cookie (HttpOnly, SameSite=Strict, the dashboard's path only)
    # holding a token, never the key
    cookie, set_cookie = _sign_in(gw.url, secret)
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in set_cookie.split(";")[1:]}
    assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=strict"
    assert attrs["path"] == "Path=/dashboard"
    assert secret not in set_cookie and len(cookie.split("=", 1)[1]) >= 32
    status, ctype, page = _get(gw.url + "/dashboard", cookie=cookie)
    assert status == 200 and ctype.startswith("text/html")
    for asset in (b"/dashboard/static/dashboard.js", b"/dashboard/static/dashboard.css"):
        assert asset in page
        status, _, body = _get(gw.url + asset.decode(), cookie=cookie)
        assert status == 200 and body
    assert b"http://" not in page and b"https://" not in page  # nothing from elsewhere
    assert _get(gw.url + "/dashboard/static/../app.py", cookie=cookie)[0] == 404
    assert _get(gw.url + "/dashboard/static/nope.js", cookie=cookie)[0] == 404
    status, _, body = _get(gw.url + "/dashboard/state", cookie=cookie)
    assert status == 200 and json.loads(body)["signed_in_as"] == "ops"
    # the cookie opens the dashboard only: the API still wants its key
    status, _, _ = _post(gw.url + "/v1/chat/completions", chat, {"Cookie": cookie})
    assert status == 401
    # the chat box's relay presents the session's key to the API's own check
    status, _, body = _post(gw.url + "/dashboard/chat", chat, {"Cookie": cookie})
    assert status == 200 and json.loads(body)["choices"], body

    req = urllib.request.Request(
        gw.url + "/v1/completions", method="POST",
        data=json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    # the router accounts the request just after its last byte: wait for that state
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, body = _get(gw.url + "/dashboard/state", secret)  # the API's bearer key
        assert status == 200
        state = json.loads(body)
        if sum(state["series"]["requests_per_s"]) >= 2:
            break
        time.sleep(0.05)  # paced: an unpaced poll on a busy host logged past the kept lines
    (pool,) = state["pools"]
    assert pool["name"] == "m" and pool["replicas"][0]["endpoint"] == server.url[7:]
    assert state["signed_in_as"] is None  # a bearer key, no session
    assert [d["model"] for d in state["recent"]] == ["m", "m"]
    decision = state["recent"][0]
    assert decision["endpoint"] == server.url[7:]
    assert set(decision["scores"]) >= {"prefix-cache-scorer", "queue-scorer"}
    assert sum(state["series"]["requests_per_s"]) * state["series"]["step"] == 2

    # signing out ends the session: the form again
    status, headers, _ = _post_form(gw.url + "/dashboard/logout", {}, {"Cookie": cookie})
    assert status == 303 and "max-age=0" in headers["set-cookie"].lower()
    assert _get(gw.url + "/dashboard", cookie=cookie)[0] == 401
    assert _get(gw.url + "/dashboard/state", cookie=cookie)[0] == 401
    gw.stop()
    assert secret not in gw.log()  # neither the access log nor anything else wrote the key
    assert "/dashboard/login" in gw.log()  # (the access log was on)


def test_dashboard_state_shows_the_admission_queue_and_reserve(harness, web) -> None:
    """With admission on, each pool's state has the gateway's own queue and the slots kept
    for the top priority, the numbers /metrics exports; without it, none."""
    server = harness.standin()
    gw = harness.gateway({"dashboard": True, "pools": [{"model": "m", "endpoints": [server.url]}],
                          "admission": {"objectives": [{"name": "critical", "priority": 10}]}})
    for objective in ("critical", "critical", None):
        r = web.post(gw.url + "/v1/completions", json={"model": "m", "prompt": "hi",
                                                       "max_tokens": 2}, timeout=30,
                     headers={"x-gateway-inference-objective": objective} if objective else {})
        assert r.status_code == 200, r.text
    status, _, body = _get(gw.url + "/dashboard/state")
    assert status == 200
    (pool,) = json.loads(body)["pools"]
    adm = pool["admission"]
    page = web.get(gw.url + "/metrics").text
    assert adm["queued"] == web.metric(page, "inference_extension_flow_control_queue_size",
                                       inference_pool="m", priority="all") == 0
    assert adm["reserved_slots"] == web.metric(page, "inferoute_flow_control_reserved_slots",
                                               inference_pool="m")
    assert adm["top_priority_requests"] == web.metric(
        page, "inferoute_flow_control_top_priority_requests_total", inference_pool="m") == 2
    assert adm["top_priority_without_free_slot"] == web.metric(
        page, "inferoute_flow_control_top_priority_without_free_slot_total", inference_pool="m")
    off = harness.gateway({"dashboard": True,  # llm-d's policy: no release rule to queue for
                           "pools": [{"model": "m", "endpoints": [server.url],
                                      "scheduler": "llm-d"}]})
    (pool,) = json.loads(_get(off.url + "/dashboard/state")[2])["pools"]
    assert pool["admission"] is None
    assert pool["kv_fit"] is None  # llm-d's policy has no KV-fit release
