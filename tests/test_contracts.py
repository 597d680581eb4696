"""docs/CONTRACTS.md's op table is the registered ``tri_inductor::`` ops, schema for schema."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from tri_inductor.patterns import attention, load_all

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONTRACTS.md"
ROW = re.compile(r"^\| `(\w+)` \| `([^`]+)` \|", re.M)


def _registered() -> dict[str, str]:
    """op name -> its schema without the name: ``(Tensor x, ...) -> Tensor``."""
    load_all()
    out = {}
    for mod in load_all().values():
        for value in vars(mod).values():
            schema = getattr(getattr(value, "_opoverload", None), "_schema", None)  # a triton_op
            if schema is not None and schema.name.startswith("tri_inductor::"):
                name = schema.name.split("::", 1)[1]
                out[name] = str(schema).split(name, 1)[1]
    return out


def test_contracts_table_matches_the_op_schemas():
    documented = dict(ROW.findall(DOC.read_text()))
    registered = _registered()
    assert registered, "no triton_op found"
    missing = {n: s for n, s in registered.items() if n not in documented}
    wrong = {n: s for n, s in registered.items() if n in documented and documented[n] != s}
    stale = sorted(set(documented) - set(registered))
    assert not (missing or wrong or stale), (
        "docs/CONTRACTS.md is stale; rows to add or fix (op, signature):\n"
        + "\n".join(f"| `{n}` | `{s}` |" for n, s in {**missing, **wrong}.items())
        + (f"\nrows for ops that no longer exist: {stale}" if stale else ""))


def test_contracts_head_dim_bound_is_the_kernels():
    assert f"any D <= {attention.MAX_HEAD_DIM}" in DOC.read_text()
    q, k = torch.empty(1, 4, 8, attention.MAX_HEAD_DIM), torch.empty(1, 2, 8, attention.MAX_HEAD_DIM)
    assert attention._supported(q, k)
    assert not attention._supported(torch.empty(1, 4, 8, attention.MAX_HEAD_DIM + 1), k)
