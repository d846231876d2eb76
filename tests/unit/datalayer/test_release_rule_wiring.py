"""The serving shells release a pool's waiting requests by its policy's release rule, as the
virtual benchmark does (`AdmissionDriver`, shared by the gateway and the picker)."""

from __future__ import annotations

from inferoute.core.admission import ReleaseRule, parse_admission_config
from inferoute.datalayer.admission_driver import AdmissionDriver
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import parse_serving_config


def test_each_pool_gets_its_own_policys_release_rule() -> None:
    config = parse_serving_config({"pools": [
        {"model": "fit", "scheduler": "inferoute-kv-fit", "endpoints": ["http://10.0.0.1:8000"]},
        {"model": "plain", "scheduler": "llm-d", "endpoints": ["http://10.0.0.2:8000"]}]},
        "the test")
    data = DataLayer(config, scrape=False)
    driver = AdmissionDriver(parse_admission_config({}), data)
    fit = [p for p in data.router.pools["fit"].scheduler.plugins.values()
           if isinstance(p, ReleaseRule)]
    assert len(fit) == 1
    assert driver.controller._rule("fit") is fit[0]
    assert driver.controller._rule("plain") is None  # the queue's order and the budget
