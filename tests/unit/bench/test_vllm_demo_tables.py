"""The tables of `inferoute demo --engine vllm`: per-policy routing figures, and real vs
simulated with the simulator's relative error per figure."""

from __future__ import annotations

from inferoute.bench.vllm_demo import fidelity_table, routing_table


def stage(rate: float, ttft: float, itl: float, out_tps: float, hit: float) -> dict:
    return {"rate": rate, "metrics": {
        "latency": {"time_to_first_token": {"mean": ttft, "p90": ttft},
                    "inter_token_latency": {"mean": itl}, "request_latency": {"mean": 1.0}},
        "throughput": {"requests_per_sec": rate, "input_tokens_per_sec": 0.0,
                       "output_tokens_per_sec": out_tps, "total_tokens_per_sec": out_tps},
        "prefix_cache": {"hit_rate": hit}, "requests": {"failures": 0}}}


def test_routing_table_has_a_row_per_stage_and_columns_per_policy():
    reports = {
        "round-robin": {"stages": [stage(1, 0.5, 0.02, 30, 0.2), stage(2, 0.9, 0.03, 50, 0.1)]},
        "inferoute": {"stages": [stage(1, 0.2, 0.02, 31, 0.8), stage(2, 0.3, 0.02, 60, 0.8)]}}
    lines = routing_table(reports).splitlines()
    assert len(lines) == 4
    assert "round-robin: TTFT s" in lines[0] and "inferoute: hit rate" in lines[0]
    assert lines[3].split("|")[1:-1] == [" 2 ", " 0.900 ", " 50.0 ", " 10.0% ", " 0.300 ",
                                          " 60.0 ", " 80.0% "]


def test_fidelity_table_states_the_simulators_error():
    real = {"llm-d": {"stages": [stage(1, 0.50, 0.020, 40, 0.50)]}}
    sim = {"llm-d": {"stages": [stage(1, 0.55, 0.018, 40, 0.60)]}}
    row = fidelity_table(real, sim).splitlines()[2].split("|")[1:-1]
    assert [c.strip() for c in row] == [
        "llm-d", "1", "0.500", "0.550", "+10%", "20.0", "18.0", "-10%",
        "40.0", "40.0", "+0%", "50.0%", "60.0%", "+20%"]
