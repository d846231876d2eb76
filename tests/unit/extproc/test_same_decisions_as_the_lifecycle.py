"""The picker's stream handler and the core's RequestLifecycle (which the virtual benchmark
drives) make the same decisions for the same request sequence, with the real llm-d policy."""

from __future__ import annotations

import orjson

from inferoute.configfiles import resolve_config
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.lifecycle import RequestLifecycle, SendUpstream
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.extproc.protocol import EndpointPicker

SYSTEMS = ["You are a terse assistant. " * 40, "You translate into French. " * 40]


def _router() -> Router:
    eps = [Endpoint(host=f"10.0.0.{i + 1}", port=8000,
                    metrics=EndpointMetrics(waiting=i % 2, kv_usage=0.1 * i, scraped_at=0.0))
           for i in range(4)]
    return Router([ModelPool("m", Pool("m", eps), Scheduler(resolve_config("llm-d"), seed=7))])


def _scrape(router: Router, i: int) -> None:
    """The same metrics in both runs, changing from request to request."""
    for k, ep in enumerate(router.pools["m"].pool):
        ep.metrics = EndpointMetrics(waiting=(i + k) % 4, kv_usage=((i * k) % 5) / 10,
                                     scraped_at=float(i))


def _bodies() -> list[bytes]:
    return [orjson.dumps({"model": "m", "messages": [
        {"role": "system", "content": SYSTEMS[i % 2]},
        {"role": "user", "content": f"question {i} " * (1 + i % 3)}]}) for i in range(24)]


def test_picker_and_lifecycle_choose_the_same_endpoints(msgs) -> None:
    headers = {":method": "POST", ":path": "/v1/chat/completions",
               "content-type": "application/json"}
    picker = EndpointPicker(_router())
    via_picker = []
    for i, body in enumerate(_bodies()):
        _scrape(picker.router, i)
        s = picker.stream()
        assert s.handle(msgs.headers_msg(headers, mode=msgs.FULL_DUPLEX), float(i)) == []
        out = s.handle(msgs.body_msg(body, eos=True), float(i))
        via_picker.append(msgs.set_headers(out[0])["x-gateway-destination-endpoint"])

    router = _router()
    via_lifecycle = []
    for i, body in enumerate(_bodies()):
        _scrape(router, i)
        lc = RequestLifecycle(router)
        (send,) = lc.receive("chat", body, {}, request_id=f"r{i}", now=float(i))
        assert isinstance(send, SendUpstream)
        via_lifecycle.append(send.endpoint.name)

    assert via_picker == via_lifecycle
    assert len(set(via_picker)) > 1  # the sequence exercises more than one endpoint
