"""Tests of the regularized family: proximal_adagrad, adagrad_da, ftrl and their presets.

The conformance suite (tests/test_conformance.py) already runs every one of them
against its float64 NumPy reference (tests/reference.py), dense and row-sparse.
Here: hand computations and TensorFlow's own test numbers, exact zeros, warm
starts, TF's lazy sparse kernels, Keras itself when installed, and bad input.
Each test names its source.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse, compat
from tests import reference

OPTIMIZERS = {
    "proximal_adagrad": lambda **kw: adagrad_jax.proximal_adagrad(0.5, 0.1, **kw),
    "adagrad_da": lambda **kw: adagrad_jax.adagrad_da(0.5, 0.1, **kw),
    "ftrl": lambda **kw: adagrad_jax.ftrl(0.5, **kw),
}


def _step(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = jax.jit(tx.update)(grads, state, params)
    return optax.apply_updates(params, updates), state


# --- hand computations and TensorFlow's test numbers --------------------------

def test_tf1_adagrad_da_matches_tensorflows_own_tests():
    # Source: TF1 adagrad_da_test.py: lr 3.0, G_0 = 0.1, var0 = [1, 2], var1 =
    # [4, 3], grads [0.1, 0.2] and [0.01, 0.02], one step; without regularization,
    # with l1 = 0.001, and with l1 = 0.001, l2 = 2.0.
    w0, w1 = jnp.array([1.0, 2.0]), jnp.array([4.0, 3.0])
    g0, g1 = jnp.array([0.1, 0.2]), jnp.array([0.01, 0.02])
    cases = [
        ({}, [-0.904534, -1.603567], [-0.094821, -0.189358]),
        ({"l1_regularization_strength": 0.001}, [-0.895489, -1.59555], None),
        ({"l1_regularization_strength": 0.001, "l2_regularization_strength": 2.0},
         [-0.046907, -0.093659], None),
    ]
    for kwargs, expected0, expected1 in cases:
        tx = compat.tf1_adagrad_da(3.0, 0.1, **kwargs)
        params, _ = _step(tx, {"a": w0, "b": w1}, {"a": g0, "b": g1})
        np.testing.assert_allclose(params["a"], expected0, rtol=1e-5)
        if expected1 is not None:
            np.testing.assert_allclose(params["b"], expected1, rtol=1e-5)


def test_proximal_adagrad_by_hand():
    # Hand computation: tau = 0, eps = 0, lr = 0.5, g = 2: G = 4, a = 0.25,
    # v = w - 0.5; l1 = 0.4 shrinks by a * l1 = 0.1, l2 = 2 divides by 1.5.
    tx = adagrad_jax.proximal_adagrad(0.5, 0.0, 0.0, l1=0.4, l2=2.0)
    params, state = _step(tx, jnp.array([2.0, 0.55, -1.0]), jnp.array([2.0, 2.0, 2.0]))
    np.testing.assert_allclose(params, [1.4 / 1.5, 0.0, -1.4 / 1.5], rtol=1e-6)
    np.testing.assert_array_equal(state.sum_of_squares, [4.0, 4.0, 4.0])
    assert int(state.count) == 1


def test_ftrl_by_hand_with_every_term():
    # Hand computation from algorithm 1, p = 1/2, tau = 1, lr = 2, w_0 = 1,
    # warm start: z_0 = -(sqrt(1) + beta) / 2 * 1 = -1 with beta = 1.
    # g = 3, shrinkage s = 0.5: g' = 3.5; n = 10; sigma = (sqrt(10) - 1) / 2;
    # z = -1 + 3.5 - sigma; q = (sqrt(10) + 1) / 2 + l2 (0.25); l1 = 0.1.
    tx = adagrad_jax.ftrl(2.0, initial_accumulator_value=1.0, l1=0.1, l2=0.25,
                          l2_shrinkage=0.5, beta=1.0)
    with jax.enable_x64(True):
        params, state = _step(tx, jnp.array([1.0], jnp.float64), jnp.array([3.0], jnp.float64))
        sigma = (np.sqrt(10.0) - 1.0) / 2.0
        z = -1.0 + 3.5 - sigma
        q = (np.sqrt(10.0) + 1.0) / 2.0 + 0.25
        np.testing.assert_allclose(state.linear, [z], rtol=1e-14)
        np.testing.assert_allclose(params, [-(z - 0.1) / q], rtol=1e-14)


def test_ftrl_linear_times_lr_follows_tensorflows_kernel_under_a_schedule():
    """multiply_linear_by_learning_rate=True against training_ops.cc's
    ApplyFtrlV2MultiplyLinearByLr (tests/reference.py, TF's units) with a learning
    rate that halves every step: each gradient enters Z at its step's rate, so the
    weights leave the other form's (which scales the whole z by the new rate)."""
    lr = optax.exponential_decay(0.4, transition_steps=1, decay_rate=0.5)
    hyper = dict(initial_accumulator_value=0.1, l1=0.01, l2=0.04, l2_shrinkage=0.02, beta=0.1,
                 warm_start=False)
    times_lr = adagrad_jax.ftrl(lr, multiply_linear_by_learning_rate=True, **hyper)
    plain = adagrad_jax.ftrl(lr, **hyper)
    w0 = np.array([0.5, -1.0, 2.0, 0.0])
    gradients = [np.array([0.3, -0.2, 0.5, 1.0]), np.array([-0.4, 0.1, 0.2, -0.3]),
                 np.array([0.2, 0.2, -0.6, 0.05])]
    state_np = (np.full(4, 0.1), np.zeros(4))
    w_np = w0
    params = {"t": jnp.asarray(w0, jnp.float32), "p": jnp.asarray(w0, jnp.float32)}
    s_t, s_p = times_lr.init(params["t"]), plain.init(params["p"])
    for t, g in enumerate(gradients, start=1):
        w_np, state_np = reference.tf_ftrl_times_lr_step(
            w_np, g, state_np, t, lr=lambda c: 0.4 * 0.5 ** c, l1=0.01, l2=0.02,
            l2_shrinkage=0.01, beta=0.1)
        params["t"], s_t = _step(times_lr, params["t"], jnp.asarray(g, jnp.float32), s_t)
        params["p"], s_p = _step(plain, params["p"], jnp.asarray(g, jnp.float32), s_p)
    np.testing.assert_allclose(params["t"], w_np, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(s_t.linear, state_np[1], rtol=2e-6, atol=1e-7)
    assert np.max(np.abs(np.asarray(params["t"]) - np.asarray(params["p"]))) > 1e-3


def test_ftrl_allow_zero_accumulator_changes_no_number():
    """An accumulator that starts at 0 is accepted and guarded either way (TF's TPU
    code ignores the flag too): identical, finite weights, a zero gradient keeps w."""
    results = []
    for allow in (False, True):
        tx = adagrad_jax.ftrl(0.5, initial_accumulator_value=0.0, l1=0.01,
                              allow_zero_accumulator=allow)
        w = jnp.array([1.0, -2.0, 0.5])
        state = tx.init(w)
        for g in ([0.0, 0.3, -1.0], [0.0, 0.0, 0.2]):
            w, state = _step(tx, w, jnp.array(g), state)
        results.append(w)
    np.testing.assert_array_equal(results[0], results[1])
    assert bool(jnp.all(jnp.isfinite(results[0]))) and float(results[0][0]) == 1.0


def test_proximal_adagrad_without_regularization_is_adagrad():
    # Source: the rule with l1 = l2 = 0 is adagrad's; update needs no params.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = jnp.asarray(rng.normal(size=5))
        prox, ada = adagrad_jax.proximal_adagrad(0.3, 0.2, 1e-3), adagrad_jax.adagrad(0.3, 0.2, 1e-3)
        ps, ss = prox.init(params), ada.init(params)
        for _ in range(5):
            g = jnp.asarray(rng.normal(size=5))
            up, ps = prox.update(g, ps)  # no params
            ua, ss = ada.update(g, ss, params)
            np.testing.assert_allclose(up, ua, rtol=1e-13)


# --- exact zeros --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_l1_gives_exact_zeros(name, dtype):
    # Source: the soft threshold. Small weights with small gradients cross 0
    # and must be stored as 0.0, not as a tiny remainder, in float32 and bf16.
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(scale=0.05, size=1000)).astype(dtype)
    tx = OPTIMIZERS[name](l1=0.05)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(5):
        g = jnp.asarray(rng.normal(scale=0.02, size=1000)).astype(dtype)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    values = np.asarray(params.astype(jnp.float32))
    zeros = int(np.sum(values == 0.0))
    assert zeros > 500, zeros  # most coordinates are pulled to 0 ...
    assert np.all((values == 0.0) | (np.abs(values) > 1e-6))  # ... and exactly


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_l1_gives_exact_zeros_in_tables(name):
    # Source: as above, through RowSparse updates and adagrad_jax.apply_updates.
    rng = np.random.default_rng(2)
    params = {"t": jnp.asarray(rng.normal(scale=0.05, size=(50, 4)), jnp.float32)}
    tx = OPTIMIZERS[name](l1=0.05)
    state = tx.init(params)
    ids = jnp.arange(0, 50, 2, dtype=jnp.int32)
    for _ in range(3):
        g = {"t": RowSparse(ids, jnp.asarray(rng.normal(scale=0.02, size=(25, 4)), jnp.float32))}
        u, state = tx.update(g, state, params)
        params = adagrad_jax.apply_updates(params, u)
    touched = np.asarray(params["t"][::2])
    assert int(np.sum(touched == 0.0)) > 50
    assert np.all((touched == 0.0) | (np.abs(touched) > 1e-6))


# --- starting points ----------------------------------------------------------

def test_adagrad_da_warm_start_keeps_and_continues_from_initial_weights():
    # Source: the documented argmin. With a zero gradient and no regularization
    # the centre w_0 is the minimiser; after a gradient g (tau = 0, eps = 0):
    # w = (|g| w_0 - lr g) / |g| = w_0 - lr sign(g). TF1's form (warm_start=False)
    # forgets w_0: w = -lr sign(g).
    w0 = jnp.array([3.0, -2.0])
    warm = adagrad_jax.adagrad_da(0.5, 0.0)
    params, state = _step(warm, w0, jnp.zeros(2))
    np.testing.assert_array_equal(params, w0)
    params, _ = _step(warm, params, jnp.array([4.0, -1.0]), state)
    np.testing.assert_allclose(params, [2.5, -1.5], rtol=1e-6)
    cold = adagrad_jax.adagrad_da(0.5, 0.0, warm_start=False)
    params, state = _step(cold, w0, jnp.array([4.0, -1.0]))
    np.testing.assert_allclose(params, [-0.5, 0.5], rtol=1e-6)
    assert state.initial_params is None


def test_ftrl_warm_start_takes_an_adagrad_step_from_the_initial_weights():
    # Source: algorithm 1 with z_0 = -(tau^p + beta) / lr * w_0, tau = 1, lr = 0.5:
    # n_1 = 1 + g^2 and the first step is w_0 - lr g / sqrt(n_1), an Adagrad step
    # with G_0 = 1; with a zero gradient w stays. Keras' z_0 = 0 weighs w_0 by
    # sigma / q = (sqrt(n_1) - 1) / sqrt(n_1) only: the tau part is forgotten.
    w0, g = jnp.array([3.0, -2.0]), jnp.array([4.0, -1.0])
    root = np.sqrt(1.0 + np.asarray(g) ** 2)
    params, _ = _step(adagrad_jax.ftrl(0.5, initial_accumulator_value=1.0), w0, g)
    np.testing.assert_allclose(params, w0 - 0.5 * g / root, rtol=1e-6)
    params, _ = _step(adagrad_jax.ftrl(0.5), w0, jnp.zeros(2))
    np.testing.assert_allclose(params, w0, rtol=1e-6)
    params, _ = _step(adagrad_jax.ftrl(0.5, initial_accumulator_value=1.0, warm_start=False),
                      w0, g)
    np.testing.assert_allclose(params, (root - 1) / root * w0 - 0.5 * g / root, rtol=1e-6)


def test_zero_gradients_never_give_nan():
    # Source: the documented guards. tau = eps = l2 = beta = 0 and only zero
    # gradients: every denominator is 0, and no parameter moves.
    params = jnp.array([1.0, -2.0, 0.0])
    for tx in (adagrad_jax.proximal_adagrad(0.1, 0.0, 0.0, l1=0.1),
               adagrad_jax.adagrad_da(0.1, 0.0),
               adagrad_jax.ftrl(0.1, initial_accumulator_value=0.0)):
        state = tx.init(params)
        p = params
        for _ in range(3):
            p, state = _step(tx, p, jnp.zeros(3), state)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((p, state)))
        np.testing.assert_array_equal(p, params)


# --- TensorFlow's lazy sparse kernels -----------------------------------------

@pytest.mark.parametrize("preset, step, init", [
    (lambda: compat.tf1_proximal_adagrad(0.4, 0.1, 0.01, 0.05),
     lambda w, g, s, t: reference.tf1_proximal_adagrad_step(w, g, s, t, lr=0.4, l1=0.01,
                                                            l2=0.05)[:2],
     lambda w: np.full(w.shape, 0.1)),
    (lambda: compat.tf1_adagrad_da(0.4, 0.1, 0.01, 0.05),
     lambda w, g, s, t: reference.tf1_adagrad_da_step(w, g, s, t, lr=0.4, l1=0.01, l2=0.05),
     lambda w: reference.adagrad_da_init(w, tau=0.1, warm_start=False)),
    (lambda: compat.keras_ftrl(0.4, -0.5, 0.1, 0.01, 0.05, 0.02, 0.3),
     lambda w, g, s, t: reference.keras_ftrl_step(w, g, s, t, lr=0.4, l1=0.01, l2=0.05,
                                                  l2_shrinkage=0.02, beta=0.3),
     lambda w: reference.ftrl_init(w, tau=0.1, lr=0.4, warm_start=False)),
], ids=["tf1_proximal_adagrad", "tf1_adagrad_da", "keras_ftrl"])
def test_presets_match_tensorflows_sparse_kernels(preset, step, init):
    # Source: TF's SparseApply* kernels: duplicates summed, each touched row
    # updated by the dense kernel with the global step t, untouched rows left
    # as they are. Transcribed in NumPy row by row (one row = one "leaf").
    rng = np.random.default_rng(4)
    num_rows = 8
    w = rng.normal(size=(num_rows, 2))
    ref_rows = [w[r].copy() for r in range(num_rows)]
    ref_states = [init(w[r]) for r in range(num_rows)]
    params = {"t": jnp.asarray(w, jnp.float32)}
    tx = preset()
    state = tx.init(params)
    for t in range(1, 5):
        ids = rng.choice(num_rows, size=5).astype(np.int32)  # duplicates, gaps
        values = rng.normal(size=(5, 2))
        for r in np.unique(ids):
            g = values[ids == r].sum(axis=0)
            ref_rows[r], ref_states[r] = step(ref_rows[r], g, ref_states[r], t)
        grads = {"t": RowSparse(jnp.asarray(ids), jnp.asarray(values, jnp.float32))}
        u, state = tx.update(grads, state, params)
        params = adagrad_jax.apply_updates(params, u)
    np.testing.assert_allclose(params["t"], np.stack(ref_rows), rtol=2e-5, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras not installed")
def test_keras_ftrl_matches_keras_itself():
    # Source: keras.optimizers.Ftrl on the JAX backend, float32, five steps.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("Keras runs on another backend here")
    hyper = dict(learning_rate=0.3, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.01, l2_regularization_strength=0.02,
                 l2_shrinkage_regularization_strength=0.01, beta=0.2)
    rng = np.random.default_rng(5)
    w0 = rng.normal(size=(4,)).astype(np.float32)
    grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(5)]
    var = keras.Variable(w0)
    opt = keras.optimizers.Ftrl(**hyper)
    tx = compat.keras_ftrl(**hyper)
    params, state = jnp.asarray(w0), None
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        params, state = _step(tx, params, jnp.asarray(g), state)
    np.testing.assert_allclose(params, np.asarray(var.value), rtol=1e-5, atol=1e-6)


# --- bad input ----------------------------------------------------------------

@pytest.mark.parametrize("make, error, message", [
    (lambda: adagrad_jax.proximal_adagrad(l1=-0.1), ValueError, r"proximal_adagrad\(l1=-0\.1\)"),
    (lambda: adagrad_jax.proximal_adagrad(l2=float("nan")), ValueError, r"l2=nan"),
    (lambda: adagrad_jax.proximal_adagrad(l1="0.1"), TypeError, r"l1='0\.1'"),
    (lambda: adagrad_jax.adagrad_da(l1=float("inf")), ValueError, r"adagrad_da\(l1=inf\)"),
    (lambda: adagrad_jax.adagrad_da(l2=-1), ValueError, r"adagrad_da\(l2=-1\)"),
    (lambda: adagrad_jax.adagrad_da(warm_start=1), TypeError, r"warm_start=1"),
    (lambda: adagrad_jax.ftrl(learning_rate_power=0.5), ValueError,
     r"ftrl\(learning_rate_power=0\.5\).*<= 0"),
    (lambda: adagrad_jax.ftrl(learning_rate_power=float("nan")), ValueError,
     r"learning_rate_power=nan"),
    (lambda: adagrad_jax.ftrl(l2_shrinkage=-0.1), ValueError, r"ftrl\(l2_shrinkage=-0\.1\)"),
    (lambda: adagrad_jax.ftrl(beta=-1.0), ValueError, r"ftrl\(beta=-1\.0\)"),
    (lambda: adagrad_jax.ftrl(learning_rate=0.0), ValueError, r"ftrl\(learning_rate=0\.0\)"),
    (lambda: adagrad_jax.ftrl(0.1, l1_regularization_strength=0.1), TypeError,
     r"unknown argument 'l1_regularization_strength'"),
    (lambda: adagrad_jax.ftrl(pad_id=-3), ValueError, r"ftrl\(pad_id=-3\)"),
    (lambda: adagrad_jax.adagrad_da(out_of_range="clip"), ValueError,
     r"adagrad_da\(out_of_range='clip'\)"),
    (lambda: compat.keras_ftrl(l2_regularization_strength=-1.0), ValueError,
     r"keras_ftrl\(l2_regularization_strength=-1\.0\)"),
    (lambda: compat.tf1_proximal_adagrad(0.1, initial_accumulator_value=0.0), ValueError,
     r"tf1_proximal_adagrad\(initial_accumulator_value=0\.0\)"),
    (lambda: compat.tf1_adagrad_da(0.1, l1_regularization_strength=-0.5), ValueError,
     r"tf1_adagrad_da\(l1_regularization_strength=-0\.5\)"),
], ids=lambda x: None)
def test_bad_arguments_fail_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_without_params_names_the_missing_argument(name):
    tx = OPTIMIZERS[name](l1=0.1)
    state = tx.init(jnp.ones(3))
    with pytest.raises(ValueError, match=rf"{name}: update\(updates, state, params\) needs params"):
        tx.update(jnp.ones(3), state)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_complex_parameters_are_refused_at_init(name):
    with pytest.raises(TypeError, match=rf"{name}: parameter \['z'\] is complex64"):
        OPTIMIZERS[name]().init({"x": jnp.ones(2), "z": jnp.ones(2, jnp.complex64)})


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mismatched_gradients_are_reported_with_their_path(name):
    tx = OPTIMIZERS[name](l1=0.1)
    params = {"a": jnp.ones(3), "t": jnp.ones((4, 2))}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"updates\['a'\] has shape \(4,\)"):
        tx.update({"a": jnp.ones(4), "t": jnp.ones((4, 2))}, state, params)
    with pytest.raises(ValueError, match=r"updates\['t'\] is a RowSparse with values"):
        tx.update({"a": jnp.ones(3), "t": RowSparse(jnp.array([1]), jnp.ones((1, 3)))},
                  state, params)
