"""Factories for the admission tests: endpoints with given metrics, pools and requests."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.request import InferenceRequest

_ids = itertools.count()


def make_endpoint(i: int = 0, *, scraped_at: float | None = 0.0, **metrics: Any) -> Endpoint:
    return Endpoint(host=f"10.1.0.{i + 1}", port=8000,
                    metrics=EndpointMetrics(scraped_at=scraped_at, **metrics))


def make_request(*, model: str = "m", headers: dict[str, str] | None = None,
                 request_id: str | None = None, size: int = 100) -> InferenceRequest:
    return InferenceRequest(request_id=request_id or f"r{next(_ids)}", api="completions",
                            model=model, body={"model": model, "prompt": "hi"},
                            headers=dict(headers or {}), prefix_text="hi", body_size=size)


@pytest.fixture
def ep() -> Callable[..., Endpoint]:
    return make_endpoint


@pytest.fixture
def req() -> Callable[..., InferenceRequest]:
    return make_request


@pytest.fixture
def pool_of() -> Callable[..., Pool]:
    def build(*endpoints: Endpoint, model: str = "m") -> Pool:
        return Pool(model, endpoints)
    return build
