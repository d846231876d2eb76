"""`decision_costs`: the table `inferoute overhead` prints, one row per policy and a cell per
prompt size (a measurement: the test checks its shape, not its figures)."""

from inferoute.bench.decision import decision_costs


def test_decision_costs_table_has_a_cell_per_size() -> None:
    table = decision_costs(["round-robin", "inferoute", "precise"], (256, 1024), endpoints=4,
                           samples=5)
    lines = table.splitlines()
    assert lines[0] == ("| policy (4 endpoints) | 256 tokens: decision p50 / p99, update p50 "
                        "(CPU ms) | 1,024 tokens: decision p50 / p99, update p50 (CPU ms) |")
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines[2:]}
    assert set(rows) == {"round-robin", "inferoute", "precise",
                         "precise, engines holding what they were sent"}
    for cells in rows.values():
        for cell in cells:
            decision, update = cell.split(",")
            p50, p99 = (float(x) for x in decision.split("/"))
            assert 0 < p50 <= p99
            assert float(update) >= 0


def test_the_default_row_names_the_default_policy() -> None:
    """No policy given: the row is the one `serve` runs by default, named as such."""
    from inferoute.configfiles import DEFAULT_POLICY

    lines = decision_costs([None], (256,), endpoints=4, samples=5).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]][0] == f"{DEFAULT_POLICY} (default)"
