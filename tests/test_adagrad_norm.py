"""adagrad_norm: hand computations, Ward, Wu and Bottou's rule, per leaf and per model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from tests import reference_beyond as ref
from tests.problems import close, random_problem
from tests.problems import train as run

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def make(shapes=SHAPES, dtype=jnp.float32, steps=5, seed=0):
    return random_problem(shapes, dtype, steps, seed)


def reference(params, grads, *, tau, per_leaf, **hyper):
    names = sorted(params)
    dtype = np.complex128 if jnp.iscomplexobj(params[names[0]]) else np.float64
    ws = [np.asarray(params[k], dtype) for k in names]
    gs = [[np.asarray(g[k], dtype) for k in names] for g in grads]
    init = functools.partial(ref.adagrad_norm_init, tau=tau, per_leaf=per_leaf)
    out, state = ref.run(init, ref.adagrad_norm_step, ws, gs, per_leaf=per_leaf, **hyper)
    return dict(zip(names, out)), state


def test_hand_computed_steps_per_leaf_and_per_model():
    """Per leaf: a = (3, 4) gives b^2 = 25, u = g / 5; then (0, 5): b^2 = 50, u = 5 / sqrt(50).
    Per model: b^2 = 9 + 16 + 0 = 25, then + 25 + 4 = 54; the scalar leaf moves 2 / sqrt(54)."""
    g1 = {"a": jnp.array([3.0, 4.0]), "b": jnp.array(0.0)}
    g2 = {"a": jnp.array([0.0, 5.0]), "b": jnp.array(2.0)}
    tx = adagrad_jax.scale_by_adagrad_norm(eps=0.0)
    state = tx.init(jax.tree.map(jnp.zeros_like, g1))
    u, state = tx.update(g1, state)
    np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
    assert float(u["b"]) == 0.0  # 0 / 0 guarded: exactly 0, never NaN
    u, state = tx.update(g2, state)
    np.testing.assert_allclose(u["a"], [0.0, 5 / np.sqrt(50)], rtol=1e-6)
    np.testing.assert_allclose(u["b"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(state.sum_of_squares["a"], 50.0)

    tx = adagrad_jax.scale_by_adagrad_norm(eps=0.0, per_leaf=False)
    state = tx.init(jax.tree.map(jnp.zeros_like, g1))
    u, state = tx.update(g1, state)
    np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
    u, state = tx.update(g2, state)
    np.testing.assert_allclose(u["b"], 2 / np.sqrt(54), rtol=1e-6)
    np.testing.assert_allclose(state.sum_of_squares, 54.0)


def test_eps_outside_the_root_and_tau_inside():
    """Hand: g = 3, tau = 16, eps = 1: u = 3 / (sqrt(16 + 9) + 1) = 0.5."""
    tx = adagrad_jax.scale_by_adagrad_norm(16.0, eps=1.0)
    u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(u, [0.5], rtol=1e-6)


@pytest.mark.parametrize("per_leaf", [True, False], ids=["per_leaf", "per_model"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["float32", "complex64"])
def test_matches_reference(per_leaf, dtype):
    """Source: Ward, Wu and Bottou 2019 (AdaGrad-Norm), tests/reference_beyond.py."""
    params, grads = make(dtype=dtype)
    schedule = optax.linear_schedule(0.3, 0.1, 4)
    tx = adagrad_jax.adagrad_norm(schedule, 0.5, eps=1e-3, per_leaf=per_leaf)
    got, state = run(tx, params, grads)
    expected, ref_state = reference(params, grads, lr=lambda c: float(schedule(c)), tau=0.5,
                                    per_leaf=per_leaf, eps=1e-3)
    close(got, expected, rtol=1e-5, atol=1e-6)
    b2 = state[0].sum_of_squares
    b2 = [b2[k] for k in sorted(b2)] if per_leaf else b2
    np.testing.assert_allclose(b2, ref_state["b2"], rtol=1e-5)


@pytest.mark.parametrize("per_leaf", [True, False], ids=["per_leaf", "per_model"])
def test_matches_reference_float64(per_leaf):
    with jax.enable_x64(True):
        params, grads = make(dtype=jnp.float64)
        got, _ = run(adagrad_jax.adagrad_norm(0.2, per_leaf=per_leaf), params, grads)
        expected, _ = reference(params, grads, lr=0.2, tau=0.0, per_leaf=per_leaf, eps=1e-8)
        close(got, expected, rtol=1e-13, atol=1e-15)


def test_one_leaf_per_leaf_equals_per_model():
    params, grads = make({"w": (3, 4)})
    a, _ = run(adagrad_jax.adagrad_norm(0.1), params, grads)
    b, _ = run(adagrad_jax.adagrad_norm(0.1, per_leaf=False), params, grads)
    np.testing.assert_array_equal(a["w"], b["w"])


def test_zero_gradients_never_give_nan():
    tx = adagrad_jax.adagrad_norm(0.1, eps=0.0, per_leaf=False)
    params = {"w": jnp.ones(3), "none": None}
    state = tx.init(params)
    u, state = jax.jit(tx.update)({"w": jnp.zeros(3), "none": None}, state)
    assert u["none"] is None and bool(jnp.all(u["w"] == 0))
    assert float(state[0].sum_of_squares) == 0.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_sums_are_float32(dtype):
    params, grads = make(dtype=dtype, steps=3)
    for per_leaf in (True, False):
        tx = adagrad_jax.adagrad_norm(0.1, per_leaf=per_leaf)
        state0 = tx.init(params)
        u, state = jax.jit(tx.update)(grads[0], state0)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, grads[0])
        assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    # float16 squares overflow above 256: the sum is formed in float32.
    big = {"w": jnp.full((3, 4), 300.0, dtype)}
    tx = adagrad_jax.scale_by_adagrad_norm()
    u, _ = tx.update(big, tx.init(big))
    np.testing.assert_allclose(np.asarray(u["w"], np.float32), 1 / np.sqrt(12), rtol=1e-2)


def test_per_model_sum_takes_the_widest_dtype():
    with jax.enable_x64(True):
        params = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.float64),
                  "c": jnp.zeros(2, jnp.bfloat16)}
        state = adagrad_jax.scale_by_adagrad_norm(per_leaf=False).init(params)
        assert state.sum_of_squares.dtype == jnp.float64
    state = adagrad_jax.scale_by_adagrad_norm(per_leaf=False).init({})
    assert state.sum_of_squares.dtype == jnp.float32


def test_composes_with_inject_hyperparams_masked_and_multi_steps():
    params, grads = make(steps=4)
    injected = optax.inject_hyperparams(adagrad_jax.adagrad_norm)(learning_rate=0.1, eps=1e-4,
                                                                   per_leaf=False)
    a, _ = run(injected, params, grads)
    b, _ = run(adagrad_jax.adagrad_norm(0.1, eps=1e-4, per_leaf=False), params, grads)
    close(a, jax.tree.map(np.asarray, b), rtol=1e-6)
    masked = optax.masked(adagrad_jax.adagrad_norm(0.1), {"w": True, "b": False, "s": True})
    m, _ = run(masked, params, grads)
    np.testing.assert_allclose(m["w"], run(adagrad_jax.adagrad_norm(0.1), params, grads)[0]["w"],
                               rtol=1e-6)
    tx = optax.MultiSteps(adagrad_jax.adagrad_norm(0.1), every_k_schedule=2)
    state = tx.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps is not strict-clean
        u1, state = jax.jit(tx.update)(grads[0], state)
        u2, state = jax.jit(tx.update)(grads[1], state)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u1))
    mean = jax.tree.map(lambda x, y: (x + y) / 2, grads[0], grads[1])
    expected, _ = adagrad_jax.adagrad_norm(0.1).update(mean, adagrad_jax.adagrad_norm(0.1).init(
        params))
    close(u2, jax.tree.map(np.asarray, expected), rtol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(eps=-1.0), ValueError, r"adagrad_norm\(eps=-1.0\): eps must be finite and >= 0"),
    (dict(initial_accumulator_value=float("nan")), ValueError,
     "initial_accumulator_value must be finite"),
    (dict(learning_rate=-0.1), ValueError, "learning_rate must be finite and >= 0"),
    (dict(per_leaf=1), TypeError, r"adagrad_norm\(per_leaf=1\): per_leaf must be True or False"),
    (dict(epsilon=1e-3), TypeError, "Did you mean 'eps'"),
])
def test_bad_arguments_name_function_argument_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        adagrad_jax.adagrad_norm(**kwargs)


def test_integer_parameters_are_refused_at_init():
    with pytest.raises(TypeError, match=r"adagrad_norm: parameter \['i'\] has dtype int32"):
        adagrad_jax.adagrad_norm().init({"i": jnp.zeros(2, jnp.int32)})
