"""The calibration's decode window, on /metrics pages: the engine's inter-token histogram read
twice, and a window that held a prefill step refused."""

from __future__ import annotations

import pytest

from inferoute.sim.measure import ITL, STEP_TOKENS, StepWindow, histogram_of, tpot_of


def page(itl_sum: float, itl_count: int, steps: dict[float, int]) -> str:
    """A vLLM-like page: the inter-token histogram (two engines' series) and the tokens per
    step (cumulative buckets)."""
    half = itl_count // 2
    lines = [f'{ITL}_sum{{engine="0"}} {itl_sum / 2}', f'{ITL}_count{{engine="0"}} {half}',
             f'{ITL}_sum{{engine="1"}} {itl_sum / 2}',
             f'{ITL}_count{{engine="1"}} {itl_count - half}']
    total = 0
    for le, n in steps.items():
        total += n
        lines.append(f'{STEP_TOKENS}_bucket{{engine="0",le="{le}"}} {total}')
    lines.append(f'{STEP_TOKENS}_bucket{{engine="0",le="+Inf"}} {total}')
    lines += [f'{STEP_TOKENS}_count{{engine="0"}} {total}', f'{STEP_TOKENS}_sum{{engine="0"}} 0']
    return "\n".join(lines)


BOUNDS = (1.0, 8.0, 16.0, 2048.0)


def window(before: str, after: str) -> StepWindow:
    itl0, itl1 = histogram_of(before, ITL), histogram_of(after, ITL)
    assert itl0 is not None and itl1 is not None
    tok0, tok1 = histogram_of(before, STEP_TOKENS), histogram_of(after, STEP_TOKENS)
    assert tok0 is not None and tok1 is not None
    return StepWindow(itl1.since(itl0), tok1.since(tok0))


def test_the_step_is_the_mean_gap_observed_between_the_two_reads() -> None:
    before = page(5.0, 100, dict.fromkeys(BOUNDS, 0) | {8.0: 30, 2048.0: 4})
    # 40 steps of 4 decodes each: 160 gaps of 12 ms
    after = page(5.0 + 160 * 0.012, 260, dict.fromkeys(BOUNDS, 0) | {8.0: 70, 2048.0: 4})
    assert window(before, after).step(4) == pytest.approx(0.012)


def test_a_window_with_a_prefill_step_in_it_gives_no_step() -> None:
    """A sibling's 2,000-token prefill inside the window would count its step as a decode
    gap; the step-size histogram shows it and the point is refused."""
    before = page(5.0, 100, dict.fromkeys(BOUNDS, 0) | {8.0: 30})
    after = page(5.0 + 156 * 0.012 + 4 * 0.6, 260,
                 dict.fromkeys(BOUNDS, 0) | {8.0: 69, 2048.0: 1})
    assert window(before, after).step(4) is None


def test_a_step_exactly_the_batch_is_a_decode_step() -> None:
    """Eight sequences decoding compute eight tokens a step: inside the bucket le=8."""
    before = page(0.0, 0, dict.fromkeys(BOUNDS, 0))
    after = page(0.8, 80, dict.fromkeys(BOUNDS, 0) | {8.0: 10})
    assert window(before, after).step(8) == pytest.approx(0.01)
    # the same window for a batch of one: steps of up to eight tokens are not single decodes
    assert window(before, after).step(1) is None


def test_a_window_that_saw_too_few_tokens_gives_no_step() -> None:
    before = page(1.0, 10, dict.fromkeys(BOUNDS, 0))
    after = page(1.02, 12, dict.fromkeys(BOUNDS, 0) | {8.0: 1})
    assert window(before, after).step(4) is None


def test_without_a_step_size_histogram_the_gaps_alone_decide() -> None:
    itl0 = histogram_of(page(1.0, 10, {}), ITL)
    itl1 = histogram_of(page(1.5, 60, {}), ITL)
    assert itl0 is not None and itl1 is not None
    assert StepWindow(itl1.since(itl0), None).step(4) == pytest.approx(0.01)


def test_a_page_without_the_histogram_reads_none() -> None:
    assert histogram_of("vllm:num_requests_running 3\n", ITL) is None
    assert tpot_of("vllm:num_requests_running 3\n") is None
