"""megalodon_lit.core's checking helpers, which every other test relies on: the normwise relative error, the assertion
and the error table built on it, the value and shape checks, the working dtype, seeding. (Backend choice is tested
in test_dispatch.py, the kernels' output buffers in test_ops_*.py.)"""
import random

import numpy as np
import pytest
import torch

from megalodon_lit.core import (ErrorTable, NonFiniteError, assert_close, check_shape, check_values, nonfinite, rel_err,
                                seed_everything, working_dtype)


def test_rel_err_is_normwise_and_in_float64():
    e = torch.tensor([1.0, -4.0, 2.0])
    assert rel_err(e + torch.tensor([0.0, 0.0, 0.5]), e) == 0.5 / 4  # max |a - e| / max |e|
    assert rel_err(torch.zeros(3), torch.zeros(3)) == 0.0 and rel_err(torch.full((3,), 2e-3), torch.zeros(3)) == pytest.approx(2e-3)
    assert rel_err(torch.empty(0, 4), torch.empty(0, 4)) == 0.0
    # float32 vs float64: the float32 rounding of 1/3 shows (a float32 subtraction would give 0)
    third = torch.tensor([1 / 3], dtype=torch.float64)
    assert rel_err(third.float(), third) == pytest.approx(abs(float(third.float().double() - third)) / (1 / 3))
    z = torch.tensor([1 + 1j, -2j], dtype=torch.complex64)
    assert rel_err(z * (1 + 1e-3), z) == pytest.approx(1e-3, rel=1e-3)  # complex: modulus of the difference
    assert rel_err(torch.ones(2, dtype=torch.bfloat16), torch.ones(2)) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"): rel_err(torch.ones(2, 3), torch.ones(3, 2))


def test_assert_close_and_error_table():
    a, e = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.002], dtype=torch.float64)
    assert assert_close(a, e, 1e-3) == pytest.approx(0.002 / 2.002)
    with pytest.raises(AssertionError, match=r"y: relative error 9\.990e-04 exceeds 1\.0e-04"): assert_close(a, e, 1e-4, "y")
    with pytest.raises(AssertionError): assert_close(torch.tensor([float("nan")]), torch.ones(1), 1.0)  # nan never passes
    tab = ErrorTable("t").add("ok row", a, a, 1e-9).add("bad row", a, e, 1e-4)
    assert [r[0] for r in tab.rows] == ["ok row", "bad row"] and "NO" in repr(tab) and "| bad row |" in tab._repr_markdown_()
    with pytest.raises(AssertionError, match="t: bad row: 9.990e-04 > 1.0e-04") as info: tab.check()
    assert "ok row" not in str(info.value)
    assert ErrorTable().add("x", a, a, 0.0).check().rows[0][1] == 0.0


def test_value_and_shape_checks():
    x = torch.tensor([1.0, float("inf")])
    check_values()  # nothing to check
    check_values(nonfinite("a", torch.ones(2)), ("count must be positive", torch.tensor(False)))
    with pytest.raises(NonFiniteError, match="x has non-finite values"): check_values(nonfinite("a", torch.ones(2)), nonfinite("x", x))
    with pytest.raises(ValueError, match="^first$") as info:  # the first failing check wins; a plain ValueError
        check_values(("first", torch.tensor(True)), nonfinite("x", x))
    assert not isinstance(info.value, NonFiniteError) and issubclass(NonFiniteError, ValueError)
    check_shape("q", torch.ones(2, 3, 4), (2, None, 4))
    with pytest.raises(ValueError, match=r"q must have shape \[2, \?, 5\], got \[2, 3, 4\]"): check_shape("q", torch.ones(2, 3, 4), (2, None, 5))
    with pytest.raises(ValueError, match="got \\[2, 3\\]"): check_shape("q", torch.ones(2, 3), (2, 3, 1))


def test_working_dtype_and_seeding():
    assert working_dtype(torch.ones(1, dtype=torch.float64)) == torch.float64
    assert {working_dtype(torch.ones(1, dtype=d)) for d in (torch.float32, torch.bfloat16, torch.float16)} == {torch.float32}
    draws = []
    for _ in range(2):
        seed_everything(123)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]
    seed_everything(124)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) != draws[0]
