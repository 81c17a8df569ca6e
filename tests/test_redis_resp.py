"""Script calls built from pieces encoded once are byte for byte what hiredis packs whole,
and settle ops merged by joining bytes are the ops of each, in order."""

from __future__ import annotations

import pytest
from hiredis import pack_command

from router.redis_resp import Packer, SettleOps, bulks

SHA = "a" * 40
HEAD = ["0.3", "10.0", "6", "86400000"]


@pytest.mark.parametrize(("args", "slots"), [
    (["", "", "60000", "rpm", "10", "1"], [0, 1]),
    (["", "", "60000", "tpm", "1000", ""], [0, 1, 5]),
    (["", "", "ünïcode", "", "x"], [0, 1, 3]),
    (["", ""], [0, 1]),
])
def test_a_packed_call_is_what_hiredis_packs(args, slots):
    keys = ["router:{k:a}:rpm", "router:{k:a}:tpm"]
    packer = Packer(SHA, keys, args, slots)
    filled = list(args)
    for i, slot in enumerate(slots):
        filled[slot] = f"v{i}é"
    assert packer.pack(filled) == pack_command(("EVALSHA", SHA, len(keys), *keys, *filled))


OPS = [  # (keys, [kind, rid, a, b] per op)
    (["router:{k:a}:conc"], ["concurrent", "r1", "", ""]),
    (["router:{k:a}:tpm", "router:{k:a}:tpm:h", "router:{k:a}:tpm:l"], ["tpm", "r1", "12", ""]),
    (["router:{t:p/m}:health"], ["ok", "0.25", "ew", ""]),
    (["router:{k:a}:spend:2026-11-29", "router:{k:a}:spend:2026-11", "router:{k:a}:paid:r1"],
     ["spend", "r1", "1500", "259200000"]),
]


def test_settle_ops_joined_are_one_call_with_every_op_in_order():
    merged = SettleOps(HEAD)
    for keys, args in OPS:
        one = SettleOps(HEAD)
        one.add(bulks(keys), len(keys), bulks(args), 1)
        merged.merge(one)
    keys = [k for ks, _ in OPS for k in ks]
    args = [str(len(OPS)), *HEAD, *(a for _, op in OPS for a in op)]
    assert merged.pack("EVALSHA", SHA) == pack_command(("EVALSHA", SHA, len(keys), *keys, *args))
    assert merged.argv() == (keys, args)
