"""Stochastic rounding (``stochastic_rounding=True, seed=...``) of low-precision weights and state.

What must hold (adagrad_jax/_src/core/rounding.py, tables/stochastic_rounding.py):

* unbiased: a value between two bfloat16 (float16) neighbours rounds up with
  probability equal to its position between them, so the mean of many
  roundings is the value (checked to 6 standard errors);
* deterministic and counter-based: the same seed and step give the same
  numbers, another seed others; a table row gets the same numbers trained
  densely, row by row, and sharded over 8 devices;
* what it is for: a bfloat16 weight taking steps far below half its spacing
  stops under round-to-nearest and follows the float32 run with stochastic
  rounding; so does a bfloat16 accumulator summing small squares;
* the update that comes back (float32) lands exactly on the rounded weight
  through `optax.apply_updates` and `adagrad_jax.apply_updates`;
* every row-sparse optimizer takes the option; float32 parameters are not
  touched (the numbers are those of the plain optimizer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse
from adagrad_jax._src.core import rounding

LOW = [jnp.bfloat16, jnp.float16]

# Every optimizer of the package that takes RowSparse gradients and the option.
ROW_SPARSE = {
    "adagrad": lambda **kw: adagrad_jax.adagrad(0.05, **kw),
    "adagrad-row_wise": lambda **kw: adagrad_jax.adagrad(0.05, row_wise=True, **kw),
    "sparse_adagrad": lambda **kw: adagrad_jax.sparse_adagrad(0.05, **kw),
    "proximal_adagrad": lambda **kw: adagrad_jax.proximal_adagrad(0.05, 0.1, l1=1e-3, **kw),
    "adagrad_da": lambda **kw: adagrad_jax.adagrad_da(0.05, 0.1, **kw),
    "ftrl": lambda **kw: adagrad_jax.ftrl(0.05, l1=1e-3, **kw),
    "ftrl-stacked": lambda **kw: adagrad_jax.ftrl(0.05, stack_slots=True, **kw),
}
for _name in ("adagrad_momentum",):
    if hasattr(adagrad_jax, _name):
        ROW_SPARSE[_name] = lambda _n=_name, **kw: getattr(adagrad_jax, _n)(0.05, **kw)
for _name in ("fbgemm_rowwise_adagrad", "fbgemm_exact_adagrad"):
    if hasattr(adagrad_jax.compat, _name):
        ROW_SPARSE[f"compat.{_name}"] = lambda _n=_name, **kw: getattr(adagrad_jax.compat, _n)(
            0.05, **kw
        )


def _key(seed=0, count=0):
    return rounding.RoundingKey(jnp.uint32(seed), jnp.uint32(count))


@pytest.mark.parametrize("dtype", LOW, ids=lambda d: jnp.dtype(d).name)
def test_rounding_is_unbiased_and_lands_on_a_neighbour(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=64) * 10.0 ** rng.integers(-3, 3, 64), jnp.float32)
    draws = 4096
    counts = jnp.arange(draws, dtype=jnp.uint32)
    u = jax.vmap(lambda c: rounding.random_bits(
        rounding.RoundingKey(jnp.uint32(1), c), 0, 0, None, x.shape))(counts)
    y = jax.vmap(lambda ui: rounding.stochastic_round(x, dtype, ui))(u).astype(jnp.float32)
    nearest = x.astype(dtype)
    toward = jnp.where(nearest.astype(jnp.float32) < x, jnp.inf, -jnp.inf).astype(dtype)
    a = nearest.astype(jnp.float32)
    b = jnp.nextafter(nearest, toward).astype(jnp.float32)
    # Each result is one of the two neighbours around x.
    assert bool(jnp.all((y == a[None]) | (y == b[None])))
    gap = jnp.abs(b - a)
    p = jnp.abs(x - jnp.minimum(a, b)) / gap
    stderr = gap * jnp.sqrt(p * (1 - p) / draws)
    error = jnp.abs(y.mean(0) - x)
    assert bool(jnp.all(error <= 6 * stderr + 1e-6 * jnp.abs(x))), (error, stderr)


def test_exact_values_infinities_and_nan_are_kept():
    x = jnp.array([1.0, -0.5, 0.0, jnp.inf, -jnp.inf, jnp.nan, 3.0e38], jnp.float32)
    for dtype in LOW:
        y = rounding.stochastic_round(x, dtype, jnp.full(x.shape, 0xFFFF0000, jnp.uint32))
        nearest = x.astype(dtype)
        np.testing.assert_array_equal(np.asarray(y[:6], np.float32), np.asarray(nearest[:6],
                                                                               np.float32))


def test_random_bits_are_keyed_by_position_not_by_layout():
    key = _key(3, 5)
    whole = rounding.random_bits(key, 1, 2, None, (40, 3, 2))
    rows = jnp.array([31, 4, 17])
    np.testing.assert_array_equal(whole[rows], rounding.random_bits(key, 1, 2, rows, (3, 3, 2)))
    assert not np.array_equal(whole, rounding.random_bits(_key(4, 5), 1, 2, None, (40, 3, 2)))
    assert not np.array_equal(whole, rounding.random_bits(_key(3, 6), 1, 2, None, (40, 3, 2)))
    assert not np.array_equal(whole, rounding.random_bits(key, 2, 2, None, (40, 3, 2)))
    u = np.asarray(whole, np.float64) / 2.0**32
    assert abs(u.mean() - 0.5) < 0.05
    # Every bit is used: each of the 32 bits is set in about half the entries.
    set_bits = [(np.asarray(whole) >> b & 1).mean() for b in range(32)]
    assert all(0.3 < f < 0.7 for f in set_bits), set_bits


def _train(tx, params, grads):
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("dtype", LOW, ids=lambda d: jnp.dtype(d).name)
def test_small_steps_move_a_low_precision_weight_as_float32_does(dtype):
    """lr / sqrt(G) is about 1e-4 per step, under half the spacing at 1.0 (bf16: 3.9e-3,
    f16: 4.9e-4): round-to-nearest never moves; stochastic rounding follows float32."""
    n, steps = 4096, 300
    grads = [jnp.ones((n,), dtype)] * steps
    hyper = dict(learning_rate=1e-3, initial_accumulator_value=100.0)
    reference, _ = _train(adagrad_jax.adagrad(**hyper), jnp.ones((n,), jnp.float32),
                          [g.astype(jnp.float32) for g in grads])
    nearest, _ = _train(adagrad_jax.adagrad(**hyper), jnp.ones((n,), dtype), grads)
    rounded, _ = _train(adagrad_jax.adagrad(**hyper, stochastic_rounding=True, seed=1),
                        jnp.ones((n,), dtype), grads)
    moved = 1.0 - float(reference[0])
    assert moved > 0.015
    assert bool(jnp.all(nearest == 1.0))
    mean = float(jnp.mean(rounded.astype(jnp.float32)))
    assert abs(mean - float(reference[0])) < 0.02 * moved, (mean, float(reference[0]))
    assert rounded.dtype == jnp.dtype(dtype)


def test_a_bfloat16_accumulator_keeps_growing():
    """G summed in bfloat16 from 1.0 in steps of 1e-3 stalls (1e-3 is under half of
    bf16's spacing at 1, 3.9e-3); rounded stochastically it follows the float32 sum."""
    n, steps = 4096, 400
    grads = [jnp.full((n,), 0.03162, jnp.float32)] * steps  # g^2 ~ 1e-3
    sums = {}
    for name, kw in {"float32": {}, "nearest": dict(accumulator_dtype=jnp.bfloat16),
                     "stochastic": dict(accumulator_dtype=jnp.bfloat16,
                                        stochastic_rounding=True)}.items():
        tx = adagrad_jax.adagrad(1e-3, initial_accumulator_value=1.0, **kw)
        _, state = _train(tx, jnp.zeros((n,), jnp.float32), grads)
        sums[name] = jax.tree.leaves(adagrad_jax.accumulators(state))[0].astype(jnp.float32)
    exact = float(sums["float32"][0])
    assert exact > 1.35
    assert float(sums["nearest"][0]) == 1.0
    assert abs(float(jnp.mean(sums["stochastic"])) - exact) < 0.01 * (exact - 1.0)


def test_the_update_lands_exactly_on_the_rounded_weight():
    tx = adagrad_jax.adagrad(0.3, stochastic_rounding=True, seed=9)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.bfloat16)
    g = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)), jnp.bfloat16)
    updates, _ = tx.update(g, tx.init(w), w)
    assert updates.dtype == jnp.float32
    plain, _ = adagrad_jax.adagrad(0.3).update(g.astype(jnp.float32), adagrad_jax.adagrad(
        0.3).init(w.astype(jnp.float32)), w.astype(jnp.float32))
    with jax.numpy_dtype_promotion("standard"):  # optax adds bf16 + f32 implicitly.
        new = optax.apply_updates(w, updates)
    np.testing.assert_array_equal(np.asarray(adagrad_jax.apply_updates(w, updates), np.float32),
                                  np.asarray(new, np.float32))
    exact = w.astype(jnp.float32) + plain
    # new is one of exact's two bfloat16 neighbours, and the update is exactly new - w.
    assert bool(jnp.all(jnp.abs(new.astype(jnp.float32) - exact)
                        <= jnp.abs(jnp.spacing(new.astype(jnp.float32))) * 2 ** 16))
    np.testing.assert_array_equal(np.asarray(new.astype(jnp.float32) - w.astype(jnp.float32)),
                                  np.asarray(updates))
    rows = RowSparse(jnp.arange(6), updates)
    np.testing.assert_array_equal(np.asarray(adagrad_jax.apply_updates(w, rows), np.float32),
                                  np.asarray(new, np.float32))


def test_apply_updates_sums_repeated_ids_of_wider_values_before_rounding_once():
    table = jnp.zeros((4, 2), jnp.bfloat16) + jnp.bfloat16(1.0)
    # Three entries of 1.5e-3 for row 2: each alone rounds away, the sum (4.5e-3) does not.
    u = RowSparse(jnp.array([2, 2, -1, 2, 9]), jnp.full((5, 2), 1.5e-3, jnp.float32))
    new = adagrad_jax.apply_updates(table, u)
    expected = jnp.asarray(1.0 + 4.5e-3, jnp.float32).astype(jnp.bfloat16)
    assert bool(jnp.all(new[2] == expected)) and float(new[2, 0]) > 1.0
    assert bool(jnp.all(new[jnp.array([0, 1, 3])] == 1.0))


@pytest.mark.parametrize("name", sorted(ROW_SPARSE))
def test_every_row_sparse_optimizer_rounds_tables_like_dense_leaves(name):
    """A bfloat16 table touched on every row: row gradients and the dense gradient give
    the same weights and state bit for bit (the rows' numbers are keyed by their ids),
    and the same seed twice gives the same run; another seed another."""
    make = ROW_SPARSE[name]
    v, d = 24, 4
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=(v, d)), jnp.bfloat16) for _ in range(4)]
    perms = [jnp.asarray(rng.permutation(v)) for _ in grads]
    w0 = jnp.asarray(rng.normal(size=(v, d)), jnp.bfloat16)
    tx = make(stochastic_rounding=True, seed=5)
    dense, dense_state = _train(tx, w0, grads)
    rows, rows_state = _train(tx, w0, [RowSparse(p, g[p]) for p, g in zip(perms, grads)])
    np.testing.assert_array_equal(np.asarray(dense, np.float32), np.asarray(rows, np.float32))
    for a, b in zip(jax.tree.leaves(dense_state), jax.tree.leaves(rows_state)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    again, _ = _train(make(stochastic_rounding=True, seed=5), w0, grads)
    other, _ = _train(make(stochastic_rounding=True, seed=6), w0, grads)
    np.testing.assert_array_equal(np.asarray(again, np.float32), np.asarray(dense, np.float32))
    assert not np.array_equal(np.asarray(other, np.float32), np.asarray(dense, np.float32))
    assert dense.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", sorted(ROW_SPARSE))
def test_float32_parameters_are_not_touched(name):
    make = ROW_SPARSE[name]
    rng = np.random.default_rng(3)
    grads = [jnp.asarray(rng.normal(size=(8, 3)), jnp.float32) for _ in range(3)]
    w0 = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    plain, _ = _train(make(), w0, grads)
    rounded, state = _train(make(stochastic_rounding=True, seed=2), w0, grads)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(rounded))
    assert type(state).__name__ == "StochasticRoundingState" and int(state.count) == 3


def test_update_without_params_is_refused_by_name():
    tx = adagrad_jax.adagrad(stochastic_rounding=True)
    with pytest.raises(ValueError, match=r"adagrad\(stochastic_rounding=True\).*needs\s+params"):
        tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))


def test_inject_hyperparams_passes_the_seed_as_an_array():
    # (float32 hyperparameters: optax would make them bfloat16 like the parameters,
    # and strict promotion, which the suite runs under, refuses bfloat16 * float32.)
    tx = optax.inject_hyperparams(adagrad_jax.adagrad, hyperparam_dtype=jnp.float32)(
        learning_rate=0.1, stochastic_rounding=True, seed=4)
    w = jnp.ones(3, jnp.bfloat16)
    u, _ = jax.jit(tx.update)(jnp.ones(3, jnp.bfloat16), tx.init(w), w)
    assert u.dtype == jnp.float32 and bool(jnp.all(u < 0))


# --- sharded: the same numbers on 8 devices -------------------------------------------


def _sharded_run() -> dict:
    """A bfloat16 table sharded by rows over 8 devices and the same table on one."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(0)
    v, d, k = 64, 4, 24
    w0 = jnp.asarray(rng.normal(size=(v, d)), jnp.bfloat16)
    batches = [(jnp.asarray(rng.integers(-1, v, k), jnp.int32),
                jnp.asarray(rng.normal(size=(k, d)), jnp.bfloat16)) for _ in range(3)]
    results = {}
    for name, make in (("adagrad", lambda: adagrad_jax.adagrad(
            0.05, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True, seed=11)),
            ("ftrl", lambda: adagrad_jax.ftrl(0.05, stack_slots=True, stochastic_rounding=True,
                                              seed=11))):
        tx = make()
        single, _ = _train(tx, w0, [RowSparse(i, g) for i, g in batches])
        table = jax.device_put(w0, NamedSharding(mesh, P("rows")))
        with jax.set_mesh(mesh):
            sharded, _ = _train(tx, table, [RowSparse(i, g) for i, g in batches])
        results[name] = {
            "equal": bool(np.array_equal(np.asarray(single, np.float32),
                                         np.asarray(sharded, np.float32))),
            "spec": str(sharded.sharding.spec),
            "moved": float(jnp.max(jnp.abs(single.astype(jnp.float32) - w0))),
        }
    return results


def test_sharded_tables_round_as_on_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tests.test_stochastic_rounding"], env=env,
                         capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["equal"], (name, r)
        assert "rows" in r["spec"] and r["moved"] > 0, (name, r)


if __name__ == "__main__":
    print(json.dumps(_sharded_run()))
