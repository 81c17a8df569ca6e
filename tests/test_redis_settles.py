"""What a request gives back to Redis, per kind of settle, is exactly the ops the settle
script takes: the right checks' keys, kinds and arguments, in one call standalone and one
per hash tag in Cluster (a script's keys must share a slot there)."""

from __future__ import annotations

import pytest

from router.limits import Admission, LimitSpec, plan_checks
from router.redis_plans import REFUND, RENEW, SLOTS, TOKENS, Planner
from router.redis_resp import Packer, bulk
from router.redis_settles import Settles, ok_ops
from router.state import StateSettings

HEAD = ["0.3", "10.0", "6", "86400000"]
KEY = ["router:{k:team}:rpm", "router:{k:team}:tpm", "router:{k:team}:tpm:h", "router:{k:team}:tpm:l",
       "router:{k:team}:conc"]
MODEL = ["router:{m:gpt}:rpm", "router:{m:gpt}:tpm", "router:{m:gpt}:tpm:h", "router:{m:gpt}:tpm:l"]
ADMISSION = Admission("team", LimitSpec(rpm=10, tpm=100, concurrent=2), None, "gpt", LimitSpec(rpm=5, tpm=1000), 10)


def plan(cluster: bool):
    planner = Planner(StateSettings(), cluster, lambda name, keys, args, slots: Packer("a" * 40, keys, args, slots))
    return planner.plan(("k",), lambda: plan_checks(ADMISSION), (), False, "2026-11-30", "2026-11")


def ops(kind: str, keys: list[str], a: str = "", b: str = "") -> tuple[list[str], list[str]]:
    return keys, [kind, "r1", a, b]


# (what it gives back, a, b, the ops of the key's hash tag, the model's)
CASES = [
    (SLOTS, "", "", [ops("concurrent", KEY[4:5])], []),
    (TOKENS, "7", "", [ops("tpm", KEY[1:4], "7"), ops("concurrent", KEY[4:5], "7")], [ops("tpm", MODEL[1:4], "7")]),
    # an rpm beside a tpm counts the tpm's entries: the tpm's refund drops the one entry
    (REFUND, "refund", "", [ops("tpm", KEY[1:4], "refund"), ops("concurrent", KEY[4:5], "refund")],
     [ops("tpm", MODEL[1:4], "refund")]),
    (RENEW, "600000", "1796000000.5", [ops("lease", KEY[4:5], "600000", "1796000000.5")], []),
]


def argv(groups: list[tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
    keys = [k for ks, _ in groups for k in ks]
    return keys, [str(len(groups)), *HEAD, *(a for _, op in groups for a in op)]


@pytest.mark.parametrize(("gives", "a", "b", "key_ops", "model_ops"), CASES)
def test_a_settle_is_one_call_standalone_with_the_ops_of_every_check_it_gives_back(gives, a, b, key_ops, model_ops):
    settles = Settles(HEAD, cluster=False)
    settles.plan(plan(False), "r1", gives, bulk(a), bulk(b))
    assert [o.argv() for o in settles] == [argv(key_ops + model_ops)]


@pytest.mark.parametrize(("gives", "a", "b", "key_ops", "model_ops"), CASES)
def test_a_settle_in_cluster_is_one_call_per_hash_tag(gives, a, b, key_ops, model_ops):
    settles = Settles(HEAD, cluster=True)
    settles.plan(plan(True), "r1", gives, bulk(a), bulk(b))
    calls = [(o.tag, o.route, o.argv()) for o in settles]
    expected = [("{k:team}", key_ops[0][0][0], argv(key_ops))]
    if model_ops:
        expected.append(("{m:gpt}", model_ops[0][0][0], argv(model_ops)))
    assert calls == expected


def test_a_refund_of_one_cluster_call_leaves_the_other_tags_alone():
    settles = Settles(HEAD, cluster=True)
    settles.plan(plan(True), "r1", REFUND, bulk("refund"), calls=[1])
    assert [o.tag for o in settles] == ["{m:gpt}"]


def test_spend_and_ok_ops_are_routed_by_their_own_keys():
    settles = Settles(HEAD, cluster=True)
    day, month = "router:{k:team}:spend:2026-11-30", "router:{k:team}:spend:2026-11"
    settles.spend(day, bulk(day) + bulk(month), "router:{k:team}:paid:r1", "r1", 1500, bulk("259200000"))
    (spend,) = settles
    assert (spend.tag, spend.route) == ("{k:team}", day)
    assert spend.argv() == ([day, month, "router:{k:team}:paid:r1"], ["1", *HEAD, "spend", "r1", "1500", "259200000"])
    ok = ok_ops(HEAD, "router:{t:p/m}:health", bulk("router:{t:p/m}:health"), "{t:p/m}", 0.25, True, "")
    assert (ok.tag, ok.argv()) == ("{t:p/m}", (["router:{t:p/m}:health"], ["1", *HEAD, "ok", "0.25", "tt", ""]))


def test_an_rpm_without_a_tpm_beside_it_is_refunded_from_its_own_key():
    planner = Planner(StateSettings(), False, lambda name, keys, args, slots: Packer("a" * 40, keys, args, slots))
    rpm_only = Admission("team", LimitSpec(rpm=10), None, "gpt", None, 10)
    settles = Settles(HEAD, cluster=False)
    settles.plan(planner.plan(("r",), lambda: plan_checks(rpm_only), (), False, "2026-11-30", "2026-11"), "r1",
                 REFUND, bulk("refund"), bulk(""))
    assert [o.argv() for o in settles] == [argv([ops("rpm", KEY[0:1], "refund")])]
