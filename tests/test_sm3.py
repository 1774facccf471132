"""SM3 (`sm3`, `scale_by_sm3`): optax's numbers, the paper's upper bound, the memory it saves.

The conformance registry (tests/specs.py: "sm3", "sm3-momentum") checks the rule
against the NumPy reference (tests/reference.py: `sm3_step`) and every other
clause; this file checks what is particular to SM3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from tests import reference

SHAPES = [(7,), (3, 4), (2, 3, 4)]


def _grads(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    # Mostly small gradients with a few large ones, so the covers' minima matter.
    return [
        (rng.standard_normal(shape) * rng.choice([0.1, 3.0], size=shape)).astype(np.float32)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_optax_sm3(shape, momentum):
    """Live against optax.sm3 (same lr, momentum, eps inside the root, b2 = 1)."""
    params = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    ours, theirs = adagrad_jax.sm3(0.1, momentum), optax.sm3(0.1, momentum)
    p, q = params, params
    s, t = ours.init(p), theirs.init(q)
    for g in _grads(shape, 8):
        u, s = ours.update(jnp.asarray(g), s, p)
        v, t = theirs.update(jnp.asarray(g), t, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-6)
    # Same accumulators: optax keeps them as a list per leaf, as we keep a tuple.
    ours_mu = s[0].accumulators
    theirs_mu = t[0].mu
    for a, b in zip(ours_mu, theirs_mu):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_scalar_leaf_keeps_a_full_accumulator():
    """optax.sm3 fails on scalars; here a scalar is its own cover (Adagrad's sum)."""
    tx = adagrad_jax.sm3(0.5, eps=0.0)
    w, state = jnp.asarray(1.0), None
    state = tx.init(w)
    ref_w, ref_state = np.float64(1.0), reference.sm3_init(np.float64(1.0))
    for t, g in enumerate([2.0, -1.0, 0.5], start=1):
        u, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, u)
        ref_w, ref_state = reference.sm3_step(ref_w, np.float64(g), ref_state, t, lr=0.5, eps=0.0)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6)
    assert state[0].accumulators[0].shape == ()


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_nu_upper_bounds_adagrads_sum_for_every_coordinate(shape):
    """The paper's Proposition 1: min over the covers of mu_t >= sum_s g_s^2, every
    coordinate, every step (so SM3's steps are at most Adagrad's)."""
    tx = adagrad_jax.scale_by_sm3(eps=0.0)
    state = tx.init(jnp.zeros(shape))
    adagrad_sum = np.zeros(shape)
    for g in _grads(shape, 12, seed=2):
        _, state = tx.update(jnp.asarray(g), state)
        adagrad_sum += np.asarray(g, np.float64) ** 2
        mus = [np.asarray(mu, np.float64) for mu in state.accumulators]
        bound = np.full(shape, np.inf)
        for k, mu in enumerate(mus):
            bound = np.minimum(bound, mu.reshape([-1 if i == k else 1 for i in range(len(shape))]))
        assert np.all(bound >= adagrad_sum * (1 - 1e-6)), float(np.min(bound - adagrad_sum))
    assert np.any(bound > adagrad_sum * 1.01)  # a bound, not the same sums


def test_state_of_a_4096_square_layer_is_two_vectors():
    """Issue 19's memory goal: at most 2 x (4096 + 4096) floats with momentum 0."""
    shapes = jax.eval_shape(adagrad_jax.sm3(0.1).init, jax.ShapeDtypeStruct((4096, 4096), jnp.float32))
    floats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert floats <= 2 * (4096 + 4096), floats
    with_momentum = jax.eval_shape(
        adagrad_jax.sm3(0.1, 0.9).init, jax.ShapeDtypeStruct((4096, 4096), jnp.float32)
    )
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(with_momentum)) > 4096 * 4096


def test_accumulators_reads_the_vectors():
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    tx = adagrad_jax.sm3(0.1)
    _, state = tx.update({"w": jnp.ones((2, 3)), "b": jnp.full(3, 2.0)}, tx.init(params))
    acc = adagrad_jax.accumulators(state)
    assert [a.shape for a in acc["w"]] == [(2,), (3,)]
    np.testing.assert_array_equal(acc["b"][0], [4.0, 4.0, 4.0])


@pytest.mark.parametrize("shape", [(12,), (12, 3), (12, 2, 3)], ids=str)
def test_table_rows_train_as_the_dense_rule(shape):
    """Lazy SM3 on a table is the dense rule with zero rows elsewhere (momentum 0):
    a third of the rows touched per step, ids repeated and padded, against dense
    gradients with the same rows; the covers stay one vector per axis, O(k x D)."""
    rng = np.random.default_rng(4)
    w0 = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    tx = adagrad_jax.sm3(0.1, eps=1e-6, pad_id=11)
    sparse_w, dense_w = w0, w0
    sparse_s, dense_s = tx.init(w0), tx.init(w0)
    for _ in range(6):
        ids = rng.choice(shape[0], 5).astype(np.int32)
        ids[0] = ids[1]  # a duplicate
        ids = np.concatenate([ids, [-1, 11]])  # padding and pad_id
        values = rng.standard_normal((ids.size,) + shape[1:]).astype(np.float32)
        full = np.zeros(shape, np.float32)
        np.add.at(full, ids[:-2][ids[:-2] != 11], values[:-2][ids[:-2] != 11])
        u, sparse_s = jax.jit(tx.update)(
            adagrad_jax.RowSparse(jnp.asarray(ids), jnp.asarray(values)), sparse_s, sparse_w)
        sparse_w = adagrad_jax.apply_updates(sparse_w, u)
        v, dense_s = jax.jit(tx.update)(jnp.asarray(full), dense_s, dense_w)
        dense_w = optax.apply_updates(dense_w, v)
    np.testing.assert_allclose(sparse_w, dense_w, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(sparse_s), jax.tree.leaves(dense_s)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected = [(shape[0],)] if len(shape) == 1 else [(n,) for n in shape]
    state = sparse_s[0]
    assert [mu.shape for mu in jax.tree.leaves(state.accumulators)] == expected


def test_table_momentum_is_lazy():
    """With momentum, untouched rows keep m (and do not move); touched rows step."""
    tx = adagrad_jax.sm3(0.1, momentum=0.9)
    w = jnp.ones((6, 2))
    state = tx.init(w)
    g = adagrad_jax.RowSparse(jnp.array([1, 4]), jnp.ones((2, 2)))
    for _ in range(3):
        u, state = tx.update(g, state, w)
        w = adagrad_jax.apply_updates(w, u)
    g = adagrad_jax.RowSparse(jnp.array([4]), jnp.ones((1, 2)))
    m_before = state[0].momentum
    u, state = tx.update(g, state, w)
    np.testing.assert_array_equal(state[0].momentum[1], m_before[1])
    assert float(jnp.abs(state[0].momentum[4] - m_before[4]).max()) > 0
    assert u.indices.tolist() == [4]


def test_table_unique_rows_bound():
    tx = adagrad_jax.sm3(0.1, unique_rows=3)
    w = jnp.zeros((10, 2))
    g = adagrad_jax.RowSparse(jnp.array([2, 2, 5, 7, 5]), jnp.ones((5, 2)))
    u, _ = tx.update(g, tx.init(w), w)
    assert u.indices.shape == (3,) and sorted(u.indices.tolist()) == [2, 5, 7]
    with pytest.raises(ValueError, match=r"sm3\(unique_rows=3\).*4 distinct row ids"):
        tx.update(adagrad_jax.RowSparse(jnp.array([1, 2, 3, 4]), jnp.ones((4, 2))),
                  tx.init(w), w)


def test_table_skip_coordinate_acts_on_summed_rows():
    """A NaN in the second occurrence of id 3 skips row 3's coordinate (summed, as the
    engine's optimizers do); row 5, which holds update entry 1 (the NaN's position
    in the gradient), still steps there."""
    tx = adagrad_jax.sm3(0.1, nonfinite="skip_coordinate")
    w = jnp.zeros((8, 2))
    g = adagrad_jax.RowSparse(
        jnp.array([3, 3, 5]), jnp.array([[1.0, 1.0], [jnp.nan, 2.0], [1.0, 1.0]])
    )
    u, state = tx.update(g, tx.init(w), w)
    new = adagrad_jax.apply_updates(w, u)
    assert float(new[3, 0]) == 0.0 and float(new[3, 1]) < 0.0
    assert float(new[5, 0]) < 0.0 and float(new[5, 1]) < 0.0
    assert int(state.nonfinite_steps) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
