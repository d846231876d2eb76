"""Per-request latency objectives: the `x-slo-ttft-ms` / `x-slo-tpot-ms` headers.

The header names are those of llm-d's predicted-latency scheduling. Both the scheduler (the
`latency-slo-scorer` plugin routes to meet them) and admission (the flow-control queue orders
by the TTFT deadline and sheds a sheddable request that has missed it) read them here, so a
malformed header is the same 400 wherever it is first read.

A TTFT target counts from when the request reached the gateway: admission notes how long a
request waited in its queue (`note_wait`), and `slo_targets` gives the scheduler what is left
of the target, so a request released late goes where it can still make it, or, sheddable and
predicted to miss even that, is refused (429 `slo_unattainable`) rather than sent late.
"""

from __future__ import annotations

from .errors import BadRequest
from .request import InferenceRequest

__all__ = ["note_wait", "slo_targets", "TPOT_HEADER", "TTFT_HEADER", "ttft_target"]

TTFT_HEADER = "x-slo-ttft-ms"
TPOT_HEADER = "x-slo-tpot-ms"
#: `InferenceRequest.attributes` key: seconds the request waited in the admission queue
WAITED = "admission.waited"
#: the least TTFT budget left (s): a target already spent stays a target, one no endpoint meets
MIN_LEFT = 0.001


def _header_ms(request: InferenceRequest, name: str) -> float | None:
    raw = request.header(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1e9:  # also rejects nan and inf
        raise BadRequest(f"header {name!r} must be a positive number of milliseconds, "
                         f"got {raw!r}", param=name)
    return value / 1000.0


def ttft_target(request: InferenceRequest) -> float | None:
    """The request's TTFT target in seconds from its header (None: none); raises BadRequest
    for a header that is not a positive number."""
    return _header_ms(request, TTFT_HEADER)


def note_wait(request: InferenceRequest, seconds: float) -> None:
    """Admission released `request` after it waited `seconds` in the gateway's queue."""
    request.attributes[WAITED] = seconds


def slo_targets(request: InferenceRequest, default_ttft_ms: float | None = None,
                default_tpot_ms: float | None = None) -> tuple[float | None, float | None]:
    """(TTFT, TPOT) targets of `request` in seconds (None: none), headers first, the TTFT
    target less the time the request waited in admission (at least 1 ms); raises BadRequest
    for a header that is not a positive number."""
    ttft = ttft_target(request)
    tpot = _header_ms(request, TPOT_HEADER)
    if ttft is None and default_ttft_ms is not None:
        ttft = default_ttft_ms / 1000.0
    waited = request.attributes.get(WAITED)
    if ttft is not None and waited:
        ttft = max(MIN_LEFT, ttft - waited)
    if tpot is None and default_tpot_ms is not None:
        tpot = default_tpot_ms / 1000.0
    return ttft, tpot
