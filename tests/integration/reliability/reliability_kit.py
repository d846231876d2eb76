"""Helpers for the reliability tests: `inferoute sim` replicas as separate processes (so
one can be killed), `inferoute serve` in front, a stdlib SSE client, and gauge checks.

The process plumbing (inferoute.procs, plus stopping with a log check) is the gateway tests'
harness, loaded from tests/integration/gateway/conftest.py by path.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferoute.procs import free_port


def _load_gateway_harness():  # type: ignore[no-untyped-def]
    name = "inferoute_tests_gateway_harness"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "gateway" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


gw = _load_gateway_harness()
get, post, metric_value = gw.get, gw.post, gw.metric_value
OBJECTIVE = "x-gateway-inference-objective"


class Harness(gw.Harness):
    """The gateway harness plus one-replica simulator processes and gateway log flags."""

    def sim_one(self, *extra: str, time_scale: float = 1.0) -> gw.Proc:
        port = free_port()
        return self.start(["inferoute", "sim", "--model", "sim-model", "--port", str(port),
                           "--profile", "tiny", "--time-scale", str(time_scale), *extra], port)

    def metrics_gate(self, target: str) -> gw.Proc:
        """`metrics_gate.py` in front of `target` (its /metrics can be switched off)."""
        port = free_port()
        script = str(Path(__file__).with_name("metrics_gate.py"))
        p = gw.Proc([sys.executable, script, "--port", str(port), "--target", target], port)
        self.procs.append(p)
        p.wait_for_http(p.url + "/health")
        return p

    def serve(self, config: dict, *flags: str) -> gw.Proc:
        """`inferoute serve --config` with extra flags; waits until it is ready."""
        return self.gateway(config, flags=flags)


def wait_ready(gw_url: str, model: str, n: int, timeout: float = 20.0) -> None:
    """Until the gateway reports exactly `n` ready endpoints for `model`."""
    deadline = time.monotonic() + timeout
    while True:
        got = get(gw_url + "/ready").json().get("ready_endpoints", {}).get(model)
        if got == n:
            return
        assert time.monotonic() < deadline, f"{model}: {got} ready endpoints, wanted {n}"
        time.sleep(0.05)


def in_flight(gw_url: str) -> float:
    """Requests the gateway still counts as in flight (per endpoint and per model)."""
    total = 0.0
    for line in get(gw_url + "/metrics").text.splitlines():
        if line.startswith(("inferoute_endpoint_in_flight_requests{",
                            "inference_objective_running_requests{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_books_closed(gw_url: str, timeout: float = 10.0) -> None:
    """In-flight gauges (and the flow-control queue, when on) return to 0."""
    deadline = time.monotonic() + timeout
    while True:
        page = get(gw_url + "/metrics").text
        queued = metric_value(page, "inference_extension_flow_control_queue_size",
                              priority="all") or 0.0
        busy = in_flight(gw_url)
        if busy == 0 and queued == 0:
            return
        assert time.monotonic() < deadline, f"in flight {busy}, queued {queued}:\n{page}"
        time.sleep(0.05)


@dataclass
class Outcome:
    """What one client saw: status, and for a stream its data events and whether it ended."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[str] | None = None
    done: bool = False  # an event stream ended with `data: [DONE]`
    truncated: bool = False  # the connection ended without a clean end

    @property
    def error(self) -> dict | None:
        """The OpenAI error object, from a JSON error body or an error event."""
        if self.events is not None:
            for ev in self.events:
                if ev != "[DONE]" and '"error"' in ev:
                    obj = json.loads(ev)
                    if "error" in obj:
                        return obj["error"]
            return None
        try:
            obj = json.loads(self.body)
        except ValueError:
            return None
        return obj.get("error") if isinstance(obj, dict) else None

    def ok(self) -> bool:
        """A complete, successful response."""
        if self.status != 200 or self.truncated:
            return False
        if self.events is not None:
            return self.done and self.error is None
        return self.error is None

    def clean(self) -> bool:
        """A complete response or a clean OpenAI-style error (never a cut-off stream)."""
        if self.truncated:
            return False
        if self.ok():
            return True
        err = self.error
        if err is None or not {"message", "type", "code"} <= set(err):
            return False
        return self.done if self.events is not None else True


def call(url: str, body: dict, headers: dict[str, str] | None = None,
         timeout: float = 30.0, on_first: Callable[[Outcome], None] | None = None) -> Outcome:
    """POST `body` (streaming or not) and read the whole answer with the standard library."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("POST", "/" + rest, body=json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if "text/event-stream" not in hdrs.get("content-type", ""):
            try:
                return Outcome(resp.status, hdrs, resp.read())
            except http.client.IncompleteRead as exc:
                return Outcome(resp.status, hdrs, exc.partial, truncated=True)
        out = Outcome(resp.status, hdrs, events=[])
        assert out.events is not None
        try:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    data = line[5:].strip()
                    out.events.append(data)
                    if on_first is not None and len(out.events) == 1:
                        on_first(out)
                    if data == "[DONE]":
                        out.done = True
            if not out.done:
                out.truncated = True
        except (http.client.IncompleteRead, ConnectionError):
            out.truncated = True
        return out
    finally:
        conn.close()
