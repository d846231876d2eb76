"""The serving shells release a pool's waiting requests by its policy's release rule, as the
virtual benchmark does (`AdmissionDriver`, shared by the gateway and the picker)."""

from __future__ import annotations

from inferoute.core.admission import ReleaseRule, parse_admission_config
from inferoute.datalayer.admission_driver import AdmissionDriver
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import parse_serving_config


def test_each_pool_gets_its_own_policys_release_rule() -> None:
    config = parse_serving_config({"pools": [
        {"model": "fit", "scheduler": "inferoute", "endpoints": ["http://10.0.0.1:8000"]},
        {"model": "plain", "scheduler": "llm-d", "endpoints": ["http://10.0.0.2:8000"]}]},
        "the test")
    data = DataLayer(config, scrape=False)
    driver = AdmissionDriver(parse_admission_config({}), data)
    fit = [p for p in data.router.pools["fit"].scheduler.plugins.values()
           if isinstance(p, ReleaseRule)]
    assert len(fit) == 1
    assert driver.controller._rule("fit") is fit[0]
    assert driver.controller._rule("plain") is None  # the queue's order and the budget


def test_the_gateway_without_an_admission_section_queues_only_for_a_release_rule() -> None:
    pools = [{"model": "fit", "scheduler": "inferoute",
              "endpoints": ["http://10.0.0.1:8000"]},
             {"model": "plain", "scheduler": "llm-d", "endpoints": ["http://10.0.0.2:8000"]}]
    data = DataLayer(parse_serving_config({"pools": pools}, "the test"), scrape=False)
    driver = AdmissionDriver.for_gateway(None, data)
    assert driver is not None and driver.controller.rules_only
    assert driver.controller._rule("fit") is not None
    # no rule anywhere, no section: no admission at all
    plain = DataLayer(parse_serving_config({"pools": pools[1:]}, "the test"), scrape=False)
    assert AdmissionDriver.for_gateway(None, plain) is None
    # a section: full admission, as configured
    full = AdmissionDriver.for_gateway(parse_admission_config({}), data)
    assert full is not None and not full.controller.rules_only
