"""`adagrad_momentum`: hand-computed steps, tables, the zero guard, both slot layouts.

The rule (its docstring; TensorFlow's SparseCore BuildAdagradMomentumOptimizerComputation):
a_t = a_{t-1} + g^2 (beta2 = 1) or beta2 a_{t-1} + (1 - beta2) g^2; s_t = g (a_t + eps)^(-1/k);
m_t = momentum m_{t-1} + s_t; u_t = -lr (m_t, or momentum m_t + s_t with Nesterov).
The conformance suite (tests/specs.py) runs every clause on it against tests/reference.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse


def _run(tx, params, grads, apply=optax.apply_updates, *, jit=False):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for g in grads:
        updates, state = update(g, state, params)
        params = apply(params, updates)
    return params, state


def test_two_steps_by_hand_momentum():
    """tau = 0, eps = 0, lr = 0.1, momentum 0.5; g = 3 then 4.
    Step 1: a = 9, s = 3/3 = 1, m = 1, w = -0.1.
    Step 2: a = 25, s = 4/5 = 0.8, m = 0.5 + 0.8 = 1.3, w = -0.1 - 0.13 = -0.23."""
    tx = adagrad_jax.adagrad_momentum(0.1, 0.5, initial_accumulator_value=0.0, eps=0.0)
    w, state = _run(tx, jnp.zeros(1), [jnp.array([3.0]), jnp.array([4.0])])
    np.testing.assert_allclose(w, [-0.23], rtol=1e-6)
    np.testing.assert_allclose(state[0].accumulator, [25.0])
    np.testing.assert_allclose(state[0].momentum, [1.3], rtol=1e-6)


def test_two_steps_by_hand_nesterov():
    """As above with Nesterov: d = 0.5 m + s.
    Step 1: m = 1, d = 0.5 + 1 = 1.5, w = -0.15.
    Step 2: m = 1.3, d = 0.65 + 0.8 = 1.45, w = -0.15 - 0.145 = -0.295."""
    tx = adagrad_jax.adagrad_momentum(
        0.1, 0.5, initial_accumulator_value=0.0, eps=0.0, use_nesterov=True
    )
    w, _ = _run(tx, jnp.zeros(1), [jnp.array([3.0]), jnp.array([4.0])])
    np.testing.assert_allclose(w, [-0.295], rtol=1e-6)


def test_two_steps_by_hand_beta2_and_exponent_4():
    """beta2 = 0.5, exponent 4, tau = 4, eps = 0, momentum 0.5, lr 1, m_0 = 1; g = 2 then 4.
    Step 1: a_1 = 0.5*4 + 0.5*4 = 4, s_1 = 2 / 4^(1/4) = sqrt(2), m_1 = 0.5 + sqrt(2),
    w_1 = -m_1. Step 2: a_2 = 0.5*4 + 0.5*16 = 10, s_2 = 4 / 10^(1/4),
    m_2 = 0.5 m_1 + s_2, w_2 = w_1 - m_2."""
    tx = adagrad_jax.adagrad_momentum(
        1.0,
        0.5,
        beta2=0.5,
        exponent=4.0,
        eps=0.0,
        initial_accumulator_value=4.0,
        initial_momentum_value=1.0,
    )
    w, state = _run(tx, jnp.zeros(1), [jnp.array([2.0]), jnp.array([4.0])])
    m1 = 0.5 + np.sqrt(2.0)
    m2 = 0.5 * m1 + 4.0 / 10.0**0.25
    np.testing.assert_allclose(w, [-m1 - m2], rtol=1e-6)
    np.testing.assert_allclose(adagrad_jax.accumulators(state), [10.0], rtol=1e-6)


def test_a_negative_initial_momentum_is_allowed_and_moves_w():
    """m_0 = -1, momentum 0.5, g = 0 where tau = 1: s = 0, m = -0.5, w = +0.1 * 0.5."""
    tx = adagrad_jax.adagrad_momentum(0.1, 0.5, initial_momentum_value=-1.0)
    w, _ = _run(tx, jnp.zeros(1), [jnp.zeros(1)])
    np.testing.assert_allclose(w, [0.05], rtol=1e-6)


@pytest.mark.parametrize("beta2", [1.0, 0.9])
def test_never_nan_with_eps_zero_and_zero_gradients(beta2):
    """tau = eps = 0 and zero gradients: a + eps = 0, s = 0 (the guard), never 0 * inf.
    Also under inject_hyperparams (the guard is then always compiled in)."""
    params = {"w": jnp.zeros(3), "t": jnp.zeros((4, 2))}
    grads = [
        {"w": jnp.array([0.0, 1.0, 0.0]), "t": RowSparse(jnp.array([1]), jnp.zeros((1, 2)))}
    ] * 3
    for make in (
        adagrad_jax.adagrad_momentum,
        optax.inject_hyperparams(adagrad_jax.adagrad_momentum),
    ):
        tx = make(0.1, beta2=beta2, eps=0.0, initial_accumulator_value=0.0)
        w, state = _run(tx, params, grads, adagrad_jax.apply_updates)
        for x in jax.tree.leaves((w, state)):
            assert np.all(np.isfinite(np.asarray(x)))
        assert float(w["w"][0]) == 0.0 and float(w["w"][2]) == 0.0
        assert float(w["w"][1]) < 0.0
        np.testing.assert_array_equal(w["t"], np.zeros((4, 2)))


def test_dense_equals_table_when_every_row_is_touched():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    steps = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    tx = adagrad_jax.adagrad_momentum(0.1, use_nesterov=True, beta2=0.9)
    dense, d_state = _run(tx, table, [jnp.asarray(g) for g in steps])
    # Every row, split into two entries with a duplicate id (summed first).
    ids = jnp.array([4, 0, 1, 2, 3, 4])
    rows = [
        RowSparse(ids, jnp.asarray(np.concatenate([g[4:] / 2, g[:4], g[4:] / 2]))) for g in steps
    ]
    sparse, s_state = _run(tx, table, rows, adagrad_jax.apply_updates)
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s_state, d_state
    )


def test_untouched_rows_keep_value_accumulator_and_momentum():
    """Lazy, as TPU embeddings: rows 0 and 2 are touched at step 1 only; at step 2 only
    row 1 is: rows 0 and 2 keep their m (no decay) and do not move, though m != 0.
    Densely the same zero rows would move by -lr * momentum * m."""
    table = jnp.zeros((3, 2))
    tx = adagrad_jax.adagrad_momentum(0.1, 0.9, beta2=0.5)
    step1 = RowSparse(jnp.array([0, 2]), jnp.ones((2, 2)))
    step2 = RowSparse(jnp.array([1]), jnp.ones((1, 2)))
    after1, state1 = _run(tx, table, [step1], adagrad_jax.apply_updates)
    updates, state2 = tx.update(step2, state1, after1)
    after2 = adagrad_jax.apply_updates(after1, updates)
    rows = np.array([0, 2])
    np.testing.assert_array_equal(after2[rows], after1[rows])
    np.testing.assert_array_equal(state2[0].momentum[rows], state1[0].momentum[rows])
    np.testing.assert_array_equal(state2[0].accumulator[rows], state1[0].accumulator[rows])
    assert np.all(np.asarray(state1[0].momentum[0]) > 0)
    dense, _ = tx.update(step2.todense(3), state1, after1)
    assert np.all(np.asarray(dense[0]) < 0)  # the dense rule would move row 0


@pytest.mark.parametrize("nesterov", [False, True])
def test_stack_slots_gives_identical_numbers(nesterov):
    """Stacked (one gather, one scatter per row) and apart: bit for bit, dense and tables."""
    rng = np.random.default_rng(1)
    params = {"t": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32), "w": jnp.ones(3)}
    grads = [
        {
            "t": RowSparse(
                jnp.array([5, 1, 5, -1]), jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
            ),
            "w": jnp.asarray(rng.normal(size=3), jnp.float32),
        }
        for _ in range(3)
    ]
    kwargs = dict(use_nesterov=nesterov, beta2=0.8, exponent=3.0)
    apart_tx = adagrad_jax.adagrad_momentum(0.1, **kwargs)
    stacked_tx = adagrad_jax.adagrad_momentum(0.1, stack_slots=True, **kwargs)
    apart, a_state = _run(apart_tx, params, grads, adagrad_jax.apply_updates)
    stacked, s_state = _run(stacked_tx, params, grads, adagrad_jax.apply_updates)
    assert len(s_state[0].slots) == 1 and s_state[0].slots[0]["t"].shape == (6, 4, 2)
    jax.tree.map(np.testing.assert_array_equal, apart, stacked)
    jax.tree.map(np.testing.assert_array_equal, a_state[0].accumulator, s_state[0].accumulator)
    jax.tree.map(np.testing.assert_array_equal, a_state[0].momentum, s_state[0].momentum)


def test_scale_by_is_the_chain_without_the_learning_rate():
    g = jnp.array([1.0, -2.0, 0.5])
    scale = adagrad_jax.scale_by_adagrad_momentum(0.7, use_nesterov=True)
    full = adagrad_jax.adagrad_momentum(0.3, 0.7, use_nesterov=True)
    s_state, f_state = scale.init(g), full.init(g)
    for _ in range(3):
        d, s_state = scale.update(g, s_state)
        u, f_state = full.update(g, f_state)
        np.testing.assert_allclose(u, -0.3 * d, rtol=1e-6)


def test_stochastic_rounding_keeps_bfloat16_tables_moving():
    """bfloat16 weights of 1.0 with steps far below half their spacing (2^-8): round to
    nearest never moves them; stochastic rounding moves them by the float32 step on average."""
    params = {"t": jnp.ones((64, 16), jnp.bfloat16)}
    g = {"t": RowSparse(jnp.arange(64), jnp.ones((64, 16), jnp.bfloat16))}
    lr = 1e-4
    plain = adagrad_jax.adagrad_momentum(lr, 0.0, initial_accumulator_value=0.0)
    rounded = adagrad_jax.adagrad_momentum(
        lr, 0.0, initial_accumulator_value=0.0, stochastic_rounding=True, seed=3
    )
    w_plain, _ = _run(plain, params, [g] * 20, adagrad_jax.apply_updates, jit=True)
    w_round, _ = _run(rounded, params, [g] * 20, adagrad_jax.apply_updates, jit=True)
    np.testing.assert_array_equal(w_plain["t"], params["t"])
    # Exact float32 run: s_t = 1 / sqrt(t), w = 1 - lr * sum_t 1/sqrt(t).
    expected = 1.0 - lr * sum(1 / np.sqrt(t) for t in range(1, 21))
    mean = float(jnp.mean(w_round["t"].astype(jnp.float32)))
    assert abs(mean - expected) < 0.25 * (1.0 - expected)  # about 4 standard errors
    again, _ = _run(rounded, params, [g] * 20, adagrad_jax.apply_updates, jit=True)
    np.testing.assert_array_equal(again["t"], w_round["t"])  # deterministic


def test_accumulators_finds_a_in_both_layouts():
    params = {"w": jnp.zeros(2)}
    for stack in (False, True):
        tx = adagrad_jax.adagrad_momentum(0.1, stack_slots=stack, initial_accumulator_value=1.0)
        _, state = tx.update({"w": jnp.array([1.0, 2.0])}, tx.init(params), params)
        np.testing.assert_array_equal(adagrad_jax.accumulators(state)["w"], [2.0, 5.0])


def test_complex_parameters_are_refused_naming_the_leaf():
    with pytest.raises(TypeError, match=r"adagrad_momentum: parameter \['w'\] is complex64"):
        adagrad_jax.adagrad_momentum().init({"w": jnp.ones(2, jnp.complex64)})
