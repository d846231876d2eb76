"""Factories shared by the core unit tests: endpoints, requests and cycle contexts."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.request import InferenceRequest
from inferoute.core.scheduling.framework import CycleContext


def _ep(i: int = 0, *, role: str = "both", labels: dict[str, str] | None = None,
        in_flight: int = 0, **metrics: Any) -> Endpoint:
    metrics.setdefault("scraped_at", 0.0)
    return Endpoint(host=f"10.0.0.{i + 1}", port=8000, role=role,  # type: ignore[arg-type]
                    labels=dict(labels or {}), metrics=EndpointMetrics(**metrics),
                    in_flight_requests=in_flight)


_counter = iter(range(10**9))


def _req(text: str = "hello", *, model: str = "m", headers: dict[str, str] | None = None,
         lora: str | None = None, request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(request_id=request_id or f"req-{next(_counter)}", api="completions",
                            model=model, body={"model": model, "prompt": text},
                            headers=dict(headers or {}), prefix_text=text, lora_adapter=lora)


@pytest.fixture
def make_ep() -> Callable[..., Endpoint]:
    return _ep


@pytest.fixture
def make_req() -> Callable[..., InferenceRequest]:
    return _req


@pytest.fixture
def ctx() -> CycleContext:
    return CycleContext(now=100.0, rng=random.Random(7))


@pytest.fixture
def new_ctx() -> Callable[..., CycleContext]:
    def make(now: float = 0.0, seed: int = 7) -> CycleContext:
        return CycleContext(now=now, rng=random.Random(seed))
    return make
