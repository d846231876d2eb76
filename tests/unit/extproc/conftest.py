"""Fixtures for the ext_proc protocol tests: a router over fake endpoints and message builders.

The scheduler here uses a test-only picker (fewest in-flight requests, then name) so the
expected destination of every request is known without depending on the real plugins.
"""

from __future__ import annotations

from typing import Any, Iterable

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from inferoute.core.endpoint import Endpoint, Pool
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.config import parse_config
from inferoute.core.scheduling.registry import get_plugin_class, register
from inferoute.core.scheduling.scheduler import Scheduler

PICKER_TYPE = "test-epp-least-loaded-picker"


class LeastLoadedPicker:
    """Endpoints by in-flight requests, then name: deterministic for tests."""

    type_name = PICKER_TYPE

    def __init__(self, name: str) -> None:
        self.name = name

    def pick(self, ctx: Any, request: Any, scored: list[Any]) -> list[Endpoint]:
        eps = [s.endpoint for s in scored]
        return sorted(eps, key=lambda e: (e.in_flight_requests, e.name))


if get_plugin_class(PICKER_TYPE) is None:
    register(LeastLoadedPicker)


def make_router(n: int = 2, model: str = "m", aliases: tuple[str, ...] = ()) -> Router:
    cfg = parse_config({"plugins": [{"type": PICKER_TYPE}],
                        "schedulingProfiles": [{"name": "p",
                                                "plugins": [{"pluginRef": PICKER_TYPE}]}]})
    pool = Pool(model, [Endpoint(host=f"10.0.0.{i + 1}", port=8000) for i in range(n)])
    return Router([ModelPool(model=model, pool=pool, scheduler=Scheduler(cfg, seed=1),
                             aliases=aliases)])


@pytest.fixture
def router() -> Router:
    return make_router()


def headers_msg(headers: dict[str, str], *, eos: bool = False,
                mode: int | None = None, **kw: Any) -> pb.ProcessingRequest:
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos), **kw)
    if mode is not None:
        req.protocol_config.request_body_mode = mode
        req.protocol_config.response_body_mode = mode
    return req


def body_msg(data: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def resp_headers_msg(headers: dict[str, str], served: str | None = None,
                     eos: bool = False) -> pb.ProcessingRequest:
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    req = pb.ProcessingRequest(response_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos))
    if served is not None:
        meta = struct_pb2.Struct()
        meta.fields["x-gateway-destination-endpoint-served"].string_value = served
        req.metadata_context.filter_metadata["envoy.lb"].CopyFrom(meta)
    return req


def resp_body_msg(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def set_headers(resp: pb.ProcessingResponse) -> dict[str, str]:
    kind = resp.WhichOneof("response")
    common = getattr(resp, kind).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def streamed(resps: Iterable[pb.ProcessingResponse], kind: str = "request_body") -> list[Any]:
    return [getattr(r, kind).response.body_mutation.streamed_response for r in resps]


FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED
STREAMED = processing_mode_pb2.ProcessingMode.STREAMED


@pytest.fixture
def msgs() -> Any:
    """The message builders, as a namespace."""
    class NS:
        pass
    ns = NS()
    for f in (headers_msg, body_msg, resp_headers_msg, resp_body_msg, set_headers, streamed,
              make_router):
        setattr(ns, f.__name__, staticmethod(f))
    ns.FULL_DUPLEX, ns.BUFFERED, ns.STREAMED = FULL_DUPLEX, BUFFERED, STREAMED
    return ns
