"""Factories for the admission tests: endpoints with given metrics, pools and requests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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


class SlotsRule:
    """A release rule with `free` slots: while one is free it places an arrival, or releases
    the newest waiting request (against the queue's order); records what it was shown."""

    def __init__(self, free: int, active: bool = True) -> None:
        self.free = free
        self.active = active
        self.asked = 0
        self.seen: list[list[str]] = []

    def _take(self) -> bool:
        self.asked += 1
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def place(self, request: InferenceRequest, candidates: list[Endpoint],
              now: float) -> Endpoint | None:
        return candidates[0] if self._take() else None

    def choose(self, waiting: Sequence[InferenceRequest], candidates: list[Endpoint],
               now: float) -> int | None:
        self.seen.append([r.request_id for r in waiting])
        return len(waiting) - 1 if self._take() else None


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
