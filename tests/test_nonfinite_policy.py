"""The `nonfinite` policy's one implementation (adagrad_jax/_src/core/nonfinite_policy.py).

The behaviour of every optimizer under the policy is tested in test_conformance.py
(-k nonfinite), test_packed.py and test_robustness.py; these tests pin the shared
pieces they all call, by hand computation, and that no other module decides what
a policy skips.
"""

from __future__ import annotations

import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

import adagrad_jax
from adagrad_jax._src.core import nonfinite_policy

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def test_keep_mask_skip_coordinate_is_isfinite_of_each_entry():
    # Hand: [1, nan, -inf, 2] -> finite entries at 0 and 3.
    g = jnp.array([1.0, NAN, -INF, 2.0])
    keep = nonfinite_policy.keep_mask(g, "skip_coordinate", step_ok=None)
    np.testing.assert_array_equal(keep, [True, False, False, True])


def test_keep_mask_row_wise_keeps_a_row_only_if_all_its_entries_are_finite():
    # Hand: row 0 has a NaN, row 1 is finite, row 2 has an inf -> one answer per row.
    g = jnp.array([[1.0, NAN], [1.0, 2.0], [INF, 0.0]])
    keep = nonfinite_policy.keep_mask(g, "skip_coordinate", step_ok=None, row_wise=True)
    np.testing.assert_array_equal(keep, [False, True, False])


@pytest.mark.parametrize("step_ok", [True, False])
def test_keep_mask_skip_step_is_the_whole_steps_answer(step_ok):
    # A finite leaf of a bad step is skipped too: the answer is step_ok, for every entry.
    keep = nonfinite_policy.keep_mask(jnp.ones(3), "skip_step", step_ok=jnp.bool_(step_ok))
    assert jnp.ndim(keep) == 0 and bool(keep) == step_ok


def test_all_finite_reads_the_values_of_a_table_gradient():
    """A RowSparse carries a guard leaf that refuses arithmetic, and core does not import
    tables: the policy knows a table gradient by its indices and values and reads the
    values only (negative ids are padding, not a non-finite entry)."""
    finite = {"t": adagrad_jax.RowSparse(jnp.array([-1, 0]), jnp.ones((2, 3))), "b": jnp.ones(2)}
    assert bool(nonfinite_policy.all_finite(finite))
    bad = {"t": adagrad_jax.RowSparse(jnp.array([0]), jnp.array([[1.0, NAN, 1.0]]))}
    assert not bool(nonfinite_policy.all_finite(bad))


def test_count_nonfinite_counts_only_steps_that_met_a_nonfinite_entry():
    # Hand: 0 -> 1 after a bad step, stays 1 after a good one.
    n = nonfinite_policy.count_nonfinite(jnp.int32(0), step_ok=jnp.bool_(False))
    assert int(n) == 1
    assert int(nonfinite_policy.count_nonfinite(n, step_ok=jnp.bool_(True))) == 1


def test_keep_or_zero_and_keep_or_old_keep_the_dtype():
    # bfloat16 updates stay bfloat16 (rule 3 of ARCHITECTURE.md): the zero is of x's dtype.
    x = jnp.array([1.0, 2.0], jnp.bfloat16)
    keep = jnp.array([True, False])
    out = nonfinite_policy.keep_or_zero(keep, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out.astype(jnp.float32), [1.0, 0.0])
    old = jnp.array([5.0, 6.0], jnp.bfloat16)
    np.testing.assert_array_equal(
        nonfinite_policy.keep_or_old(keep, x, old).astype(jnp.float32), [1.0, 6.0]
    )


# The modules that apply the policy call nonfinite_policy rather than test entries
# themselves (two copies of a policy drift apart: STYLE.md, "What 0.2 taught us").
APPLIERS = [
    "adagrad_jax/_src/tables/engine.py",
    "adagrad_jax/_src/diagonal/packed.py",
    "adagrad_jax/_src/diagonal/packed_layout.py",
]


@pytest.mark.parametrize("path", APPLIERS)
def test_the_policy_is_decided_in_one_module(path):
    text = (ROOT / path).read_text()
    assert not re.search(r"\bisfinite\(", text), f"{path} tests entries itself: call keep_mask."
