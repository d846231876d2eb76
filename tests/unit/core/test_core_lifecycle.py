"""The request lifecycle, sans-I/O: events in, actions out (no sockets, the time passed in)."""

from __future__ import annotations

import random

import orjson
import pytest

from inferoute.core.admission import parse_admission_config
from inferoute.core.endpoint import EndpointMetrics, Pool
from inferoute.core.errors import TooManyRequests, UpstreamError
from inferoute.core.lifecycle import (Finish, Phase, Relay, RequestLifecycle, Respond,
                                      RetryPolicy, SendUpstream, Wait)
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.scheduler import Scheduler

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
BODY = orjson.dumps({"model": "m", "prompt": "hello there", "stream": True})


@pytest.fixture
def router(make_ep) -> Router:
    eps = [make_ep(i, scraped_at=100.0) for i in range(3)]
    return Router([ModelPool("m", Pool("m", eps), Scheduler(seed=1), aliases=("alias",))])


def flight(router: Router) -> int:
    return sum(ep.in_flight_requests for ep in router.pools["m"].pool)


def start(router: Router, body: bytes = BODY, **kw) -> tuple[RequestLifecycle, list]:
    lc = RequestLifecycle(router, rng=random.Random(3), **kw)
    return lc, lc.receive("completions", body, {}, request_id="r1", now=100.0)


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n"
                    for e in events)


def test_a_streamed_request_from_body_to_finish(router) -> None:
    lc, actions = start(router)
    (send,) = actions
    assert isinstance(send, SendUpstream) and send.attempt == 1 and send.delay == 0.0
    assert send.body == BODY and flight(router) == 1
    assert lc.first_byte(100.1) == [] and lc.decision.first_token
    stream = sse({"choices": [{"text": "hi"}]}, {"choices": [], "usage": USAGE}, b"[DONE]")
    cut = len(stream) - 10
    first = lc.body_chunk(stream[:cut])
    assert first == [Relay(stream[:stream.rfind(b"\n\n", 0, cut) + 2])]  # whole events only
    rest = lc.body_chunk(stream[cut:]) + lc.end(100.5)
    assert b"".join(a.data for a in first + rest if isinstance(a, Relay)) == stream
    assert rest[-1] == Finish(USAGE) and lc.phase is Phase.DONE and flight(router) == 0


def test_the_endpoint_is_seen_answering_at_its_first_byte_and_at_a_good_end(router) -> None:
    lc, (send,) = start(router)
    assert send.endpoint.answered_at is None
    lc.first_byte(100.1)
    assert send.endpoint.answered_at == 100.1
    lc.end(100.5)
    assert send.endpoint.answered_at == 100.5
    lc, (send,) = start(router)
    lc.upstream_answered(100.6, 503, final=True)
    lc.end(100.9)  # a 5xx end is no proof of life
    assert send.endpoint.answered_at != 100.9


def test_failures_before_the_first_byte_retry_on_the_fallbacks(router) -> None:
    lc, (send,) = start(router, retry=RetryPolicy(max_attempts=3, backoff=0.1, backoff_max=1.0))
    targets = lc.decision.result.targets
    assert send.endpoint is targets[0] and len(targets) == 2  # max-score-picker: 1 fallback
    (retry,) = lc.upstream_failed(100.1)
    assert isinstance(retry, SendUpstream) and retry.endpoint is targets[1]
    assert retry.attempt == 2 and 0.0 <= retry.delay <= 0.1
    assert targets[0].in_flight_requests == 0 and targets[1].in_flight_requests == 1
    (third,) = lc.upstream_failed(100.2)  # then the other candidate
    assert third.endpoint not in targets and third.last and third.attempt == 3
    respond, finish = lc.upstream_failed(100.3, UpstreamError("refused"))
    assert isinstance(respond, Respond) and respond.error.status == 502
    assert isinstance(finish, Finish) and flight(router) == 0 and lc.phase is Phase.DONE


def test_a_failure_after_the_first_byte_ends_the_stream_cleanly(router) -> None:
    lc, _ = start(router)
    lc.first_byte(100.1)
    lc.body_chunk(sse({"choices": [{"text": "a"}]}))
    relay, finish = lc.upstream_failed(100.2, UpstreamError("model server reset"))
    events = [e for e in relay.data.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[0][6:])["error"]["message"] == "model server reset"
    assert finish.error is not None and finish.usage is None and flight(router) == 0


def test_the_client_going_away_releases_the_endpoint(router) -> None:
    lc, _ = start(router)
    (finish,) = lc.client_gone(100.1)
    assert isinstance(finish, Finish) and finish.error is not None and flight(router) == 0
    assert lc.client_gone(100.2) == []  # once


def test_admission_makes_a_request_wait_then_releases_or_expires_it(router) -> None:
    adm = parse_admission_config({"flowControl": {"ttl": "1s"}}).controller(
        candidates_of=lambda pool, now: router.rule.ready(pool, now))
    for ep in router.pools["m"].pool:
        ep.metrics = EndpointMetrics(waiting=50, scraped_at=100.0)  # saturated
    lc, (wait,) = start(router, admission=adm)
    assert isinstance(wait, Wait) and lc.phase is Phase.WAITING and flight(router) == 0
    for ep in router.pools["m"].pool:
        ep.metrics = EndpointMetrics(scraped_at=100.2)  # capacity is back
    assert adm.dispatchable(100.2) == [wait.ticket]
    (send,) = lc.released(100.2)
    assert isinstance(send, SendUpstream) and flight(router) == 1

    for ep in router.pools["m"].pool:
        ep.metrics = EndpointMetrics(waiting=50, scraped_at=100.3)
    late, (wait2,) = start(router, admission=adm)
    ((ticket, err),) = adm.expire(102.0)
    assert ticket is wait2.ticket and isinstance(err, TooManyRequests)
    assert late.expired(err) == [Respond(err)]

    gone, _ = start(router, admission=adm)
    assert adm.queued("m") == 1
    gone.client_gone(100.4)
    assert adm.queued("m") == 0


def test_bad_input_and_unknown_models_are_answered_not_raised(router) -> None:
    _, (bad,) = start(router, body=b"{not json")
    assert isinstance(bad, Respond) and bad.error.status == 400
    _, (unknown,) = start(router, body=orjson.dumps({"model": "nope", "prompt": "x"}))
    assert isinstance(unknown, Respond) and unknown.error.status == 404


def test_an_alias_names_the_pools_model_upstream(router) -> None:
    lc, (send,) = start(router, body=orjson.dumps({"model": "alias", "prompt": "x"}))
    assert orjson.loads(send.body)["model"] == "m" and lc.request.model == "alias"


def test_events_out_of_order_are_refused(router) -> None:
    lc, _ = start(router)
    with pytest.raises(RuntimeError, match="phase sending"):
        lc.body_chunk(b"data: x\n\n")
    lc.end(100.1)
    with pytest.raises(RuntimeError, match="phase done"):
        lc.first_byte(100.2)


def test_usage_is_asked_for_and_hidden_when_the_shell_must_know_it(router) -> None:
    lc, (send,) = start(router, inject_usage=True)
    assert orjson.loads(send.body)["stream_options"] == {"include_usage": True}
    assert lc.rewriter is not None and lc.rewriter.strip_usage and lc.rename is None
    hidden = lc.rewriter.feed(sse({"choices": [], "usage": USAGE}))
    assert hidden == b"" and lc.rewriter.usage == USAGE
    asked = orjson.dumps({"model": "m", "prompt": "x", "stream": True,
                          "stream_options": {"include_usage": True}})
    lc2, (send2,) = start(router, body=asked, inject_usage=True)
    assert send2.body == asked and lc2.rewriter is None  # passed through untouched


def test_a_model_route_renames_the_answer_back_but_a_choice_made_before_does_not(router) -> None:
    lc, _ = start(router, body=orjson.dumps({"model": "alias", "prompt": "x"}))
    assert lc.rename == ("m", "alias") and lc.rewriter is not None
    assert b'"model":"alias"' in lc.rewriter.feed(b'data: {"model":"m"}\n\n')
    picked = RequestLifecycle(router)
    picked.parse("completions", orjson.dumps({"model": "auto", "prompt": "x"}), {},
                 request_id="r2", now=100.0)
    picked.request.target_model = "m"  # e.g. a semantic pick, or the proxy's rewrite header
    (send2,) = picked.route(100.0)
    assert orjson.loads(send2.body)["model"] == "m" and picked.rename is None


def test_other_paths_the_default_pool_and_the_proxys_subset(router) -> None:
    lc = RequestLifecycle(router, default_model="m")
    (send,) = lc.receive(None, orjson.dumps({"model": "anything", "input": "x"}), {},
                         request_id="e1", now=100.0)
    assert isinstance(send, SendUpstream) and lc.pool is router.pools["m"]
    (refused,) = RequestLifecycle(router).receive(None, b'{"input": "x"}', {},
                                                  request_id="e2", now=100.0)
    assert isinstance(refused, Respond) and refused.error.status == 400
    names = [ep.name for ep in router.pools["m"].pool]
    for name in names:
        only = RequestLifecycle(router)
        only.parse("completions", BODY, {}, request_id=name, now=100.0)
        (send,) = only.route(100.0, allowed=frozenset({name}))
        assert send.endpoint.name == name
        only.close(100.0)
    out = RequestLifecycle(router)
    out.parse("completions", BODY, {}, request_id="x", now=100.0)
    (none,) = out.route(100.0, allowed=frozenset({"10.9.9.9:1"}))
    assert isinstance(none, Respond) and none.error.status == 503


def relayed(actions: list) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Relay))


def test_the_relay_writes_the_clients_model_back_and_hides_the_injected_usage(router) -> None:
    lc, _ = start(router, body=orjson.dumps({"model": "alias", "prompt": "x", "stream": True}),
                  inject_usage=True)
    lc.first_byte(100.1)
    out = relayed(lc.body_chunk(sse({"model": "m", "choices": [{"text": "a"}]})[:-1]))
    assert out == b""  # half an event is held until it ends
    out = relayed(lc.body_chunk(b"\n" + sse({"model": "m", "choices": [], "usage": USAGE},
                                            b"[DONE]")))
    ends = lc.end(100.2)
    out += relayed(ends)
    assert out == sse({"model": "alias", "choices": [{"text": "a"}]}, b"[DONE]")
    assert ends[-1] == Finish(USAGE)


def test_a_plain_body_is_renamed_whole_and_its_document_kept(router) -> None:
    lc, _ = start(router, body=orjson.dumps({"model": "alias", "prompt": "x"}))
    lc.first_byte(100.1, stream=False, keep_document=True)
    body = orjson.dumps({"model": "m", "choices": [{"text": "a"}], "usage": USAGE})
    assert relayed(lc.body_chunk(body[:9]) + lc.body_chunk(body[9:])) == b""  # held to rename
    ends = lc.end(100.2)
    assert orjson.loads(relayed(ends))["model"] == "alias" and ends[-1] == Finish(USAGE)
    assert lc.document is not None and lc.document["choices"] == [{"text": "a"}]


def test_a_compressed_body_passes_through_unread(router) -> None:
    lc, _ = start(router, body=orjson.dumps({"model": "alias", "prompt": "x", "stream": True}))
    lc.first_byte(100.1, plain=False)
    gz = b"\x1f\x8b\x08\x00data: not text\n\n\x00\x01"
    assert relayed(lc.body_chunk(gz)) == gz  # not cut into events, not renamed
    assert lc.end(100.2) == [Finish(None)]


def test_a_plain_body_cut_mid_way_relays_nothing_more(router) -> None:
    lc, _ = start(router)
    lc.first_byte(100.1, stream=False)
    lc.body_chunk(b'{"choices": [')
    (finish,) = lc.upstream_failed(100.2, UpstreamError("model server reset"))
    assert isinstance(finish, Finish) and finish.error is not None  # the shell cuts the body
