"""The rule of ARCHITECTURE.md, rule 1, checked by hand and against NumPy.

Hand computations are written next to each assertion; property tests compare
random shapes, hyperparameters and step counts with `tests/reference.py`.
"""

from __future__ import annotations

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import schedules
from tests import reference


def one_update(tx, g, params=None, steps=1):
    state = tx.init(g if params is None else params)
    for _ in range(steps):
        u, state = tx.update(g, state, params)
    return u, state


# --- hand computations --------------------------------------------------------

def test_two_steps_by_hand():
    """g = 3 then 4, tau = 0, eps = 0: 3/sqrt(9) = 1, then 4/sqrt(25) = 0.8."""
    tx = adagrad_jax.adagrad(learning_rate=0.5, eps=0.0)
    state = tx.init(jnp.zeros(1))
    u1, state = tx.update(jnp.array([3.0]), state)
    u2, state = tx.update(jnp.array([4.0]), state)
    np.testing.assert_allclose(u1, [-0.5], rtol=1e-7)
    np.testing.assert_allclose(u2, [-0.4], rtol=1e-7)
    np.testing.assert_allclose(state[1].sum_of_squares, [25.0])


def test_eps_outside_and_eps_root_inside_by_hand():
    """g = 3: eps=1 gives 3/(3+1) = 0.75; eps_root=1 gives 3/sqrt(10)."""
    u_out, _ = one_update(adagrad_jax.scale_by_adagrad(eps=1.0), jnp.array([3.0]))
    u_in, _ = one_update(adagrad_jax.scale_by_adagrad(eps=0.0, eps_root=1.0), jnp.array([3.0]))
    np.testing.assert_allclose(u_out, [0.75], rtol=1e-7)
    np.testing.assert_allclose(u_in, [3 / math.sqrt(10)], rtol=1e-7)


def test_initial_accumulator_value_by_hand():
    """tau = 16, g = 3: 3 / sqrt(16 + 9) = 0.6; the state starts at tau."""
    tx = adagrad_jax.scale_by_adagrad(initial_accumulator_value=16.0, eps=0.0)
    np.testing.assert_array_equal(tx.init(jnp.zeros(2)).sum_of_squares, [16.0, 16.0])
    u, _ = one_update(tx, jnp.array([3.0, 0.0]))
    np.testing.assert_allclose(u, [0.6, 0.0], rtol=1e-7)


def test_eps_root_equals_a_larger_start():
    """ARCHITECTURE.md, rule 1: adding eps_root inside is the same as starting tau higher."""
    g = jnp.array([0.3, -1.2, 2.0])
    a, _ = one_update(adagrad_jax.scale_by_adagrad(0.5, 0.0, eps_root=0.25), g, steps=3)
    b, _ = one_update(adagrad_jax.scale_by_adagrad(0.75, 0.0), g, steps=3)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_coupled_weight_decay_by_hand():
    """w = 2, grad = 1, wd = 0.5: g = 1 + 1 = 2, update = -lr * 2/sqrt(4) = -lr."""
    tx = adagrad_jax.adagrad(learning_rate=0.1, eps=0.0, weight_decay=0.5)
    w = jnp.array([2.0])
    u, state = tx.update(jnp.array([1.0]), tx.init(w), w)
    np.testing.assert_allclose(u, [-0.1], rtol=1e-7)
    np.testing.assert_allclose(state[1].sum_of_squares, [4.0])


def test_zero_gradients_give_exact_zero_never_nan():
    """tau = eps = eps_root = 0 and g = 0: 0/0 is guarded to an update of 0."""
    tx = adagrad_jax.adagrad(learning_rate=1.0, eps=0.0)
    u, state = one_update(tx, jnp.zeros(3), steps=3)
    np.testing.assert_array_equal(u, jnp.zeros(3))
    u, _ = tx.update(jnp.array([0.0, 2.0, 0.0]), state)
    np.testing.assert_allclose(u, [0.0, -1.0, 0.0])


@pytest.mark.parametrize("kwargs", [
    {"eps": 1e-8, "accumulator_dtype": jnp.float16},  # 1e-8 rounds to 0 in float16
    {"eps": 1e-50},                                    # rounds to 0 in float32
    {"eps": 0.0, "initial_accumulator_value": 1e-50},
])
def test_zero_guard_when_positive_constants_round_to_zero(kwargs):
    """A positive Python epsilon that rounds to 0 must not switch the guard off."""
    tx = adagrad_jax.adagrad(learning_rate=0.1, **kwargs)
    u, _ = jax.jit(tx.update)(jnp.zeros(3), tx.init(jnp.zeros(3)))
    np.testing.assert_array_equal(u, jnp.zeros(3))


def test_huge_integer_hyperparameter_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"adagrad\(learning_rate=1000.*must be finite"):
        adagrad_jax.adagrad(learning_rate=10**400)


def test_zero_guard_with_traced_hyperparameters():
    """Under inject_hyperparams the epsilons are traced; the guard still holds."""
    tx = optax.inject_hyperparams(adagrad_jax.scale_by_adagrad)(
        initial_accumulator_value=0.0, eps=0.0)
    u, _ = jax.jit(lambda g, s: tx.update(g, s))(jnp.zeros(2), tx.init(jnp.zeros(2)))
    np.testing.assert_array_equal(u, [0.0, 0.0])


def test_complex_parameters_accumulate_abs_squared():
    """g = 3 + 4i: |g|^2 = 25 in a real accumulator, update = g / 5."""
    tx = adagrad_jax.scale_by_adagrad(eps=0.0)
    u, state = one_update(tx, jnp.array([3 + 4j], jnp.complex64))
    assert state.sum_of_squares.dtype == jnp.float32
    np.testing.assert_allclose(state.sum_of_squares, [25.0])
    np.testing.assert_allclose(u, [0.6 + 0.8j], rtol=1e-7)
    assert u.dtype == jnp.complex64


# --- low precision (ARCHITECTURE.md, rule 3) --------------------------------------

def test_bfloat16_accumulates_past_256():
    """1000 steps of g = 1 accumulate 1000 + tau; a bfloat16 sum would stop at 256."""
    tau = 0.1
    tx = adagrad_jax.adagrad(learning_rate=1e-3, initial_accumulator_value=tau)
    params = jnp.zeros(4, jnp.bfloat16)
    grads = jnp.ones(4, jnp.bfloat16)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, state), _ = jax.jit(
        lambda c: jax.lax.scan(body, c, None, length=1000))((params, tx.init(params)))
    acc = state[1].sum_of_squares
    assert acc.dtype == jnp.float32 and params.dtype == jnp.bfloat16
    np.testing.assert_allclose(acc, 1000 + tau, rtol=1e-6)
    # Demonstrate the failure this avoids: the same sum kept in bfloat16.
    stalled = jax.lax.fori_loop(0, 1000, lambda i, s: s + jnp.bfloat16(1), jnp.bfloat16(0))
    assert float(stalled) == 256.0


def test_float16_squares_do_not_overflow():
    """g = 300 in float16: 300^2 = 90000 > float16 max 65504, kept in float32."""
    tx = adagrad_jax.scale_by_adagrad(eps=0.0)
    g = jnp.full(3, 300.0, jnp.float16)
    u, state = one_update(tx, g, steps=2)
    np.testing.assert_allclose(state.sum_of_squares, 180000.0)
    np.testing.assert_allclose(u.astype(jnp.float32), 300 / math.sqrt(180000), rtol=1e-3)
    assert u.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(u)))


def test_accumulator_dtype_override():
    tx = adagrad_jax.scale_by_adagrad(accumulator_dtype=jnp.bfloat16)
    assert tx.init(jnp.zeros(2, jnp.float32)).sum_of_squares.dtype == jnp.bfloat16
    with jax.enable_x64(True):
        tx = adagrad_jax.scale_by_adagrad()
        assert tx.init(jnp.zeros(2, jnp.float64)).sum_of_squares.dtype == jnp.float64
        assert tx.init(jnp.zeros(2, jnp.complex128)).sum_of_squares.dtype == jnp.float64


# --- the seed material's two forms ---------------------------------------------

def rms_over_past_gradients() -> optax.GradientTransformation:
    """sigma_t = sqrt(mean(g_0^2 .. g_t^2)); divides the gradient by it."""

    def init_fn(params):
        return (jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        count, sums = state
        sums = jax.tree.map(lambda s, g: s + g * g, sums, updates)
        n = (count + 1).astype(jnp.float32)
        updates = jax.tree.map(lambda g, s: g / jnp.sqrt(s / n), updates, sums)
        return updates, (count + 1, sums)

    return optax.GradientTransformation(init_fn, update_fn)


def test_inverse_sqrt_decay_over_rms_equals_adagrad():
    """Seed form eta/sqrt(t+1) / sigma_t equals eta / sqrt(sum g^2) (DESIGN.md 1)."""
    eta = 0.3
    seed_form = optax.chain(
        rms_over_past_gradients(),
        optax.scale_by_learning_rate(schedules.inverse_sqrt_decay(eta)))
    ours = adagrad_jax.adagrad(learning_rate=eta, eps=0.0)
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(20)]
    w_seed = w_ours = jnp.zeros(5)
    s_seed, s_ours = seed_form.init(w_seed), ours.init(w_ours)
    for g in grads:
        u_seed, s_seed = seed_form.update(g, s_seed)
        u_ours, s_ours = ours.update(g, s_ours)
        np.testing.assert_allclose(u_seed, u_ours, rtol=1e-5)
    # And both equal the closed form of the slides, from the NumPy reference.
    ws, _ = reference.run(reference.adagrad_step, np.zeros(5), grads, np.zeros(5),
                          lr=eta, eps=0.0)
    np.testing.assert_allclose(
        optax.apply_updates(jnp.zeros(5), u_ours), ws[-1] - ws[-2], rtol=1e-4)


# --- property-based: the rule over random shapes, hyperparameters, steps --------

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5)
hyper = st.fixed_dictionaries({
    "learning_rate": st.floats(1e-3, 2.0),
    "initial_accumulator_value": st.sampled_from([0.0, 0.1, 3.0]),
    "eps": st.sampled_from([0.0, 1e-8, 1e-3, 1.0]),
    "eps_root": st.sampled_from([0.0, 1e-7, 0.5]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.5]),
})


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(shape=shapes, hp=hyper, num_steps=st.integers(1, 6),
                  seed=st.integers(0, 2**16), sparse=st.booleans())
def test_matches_reference_property(shape, hp, num_steps, seed, sparse):
    """float64 trajectories equal the NumPy reference of ARCHITECTURE.md, rule 1."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=shape)
    grads = [rng.normal(size=shape) * (rng.random(size=shape) < 0.5 if sparse else 1)
             for _ in range(num_steps)]
    ref_w, ref_acc = reference.run(
        reference.adagrad_step, w0, grads, np.full(shape, hp["initial_accumulator_value"]),
        lr=hp["learning_rate"], eps=hp["eps"], eps_root=hp["eps_root"],
        weight_decay=hp["weight_decay"])
    with jax.enable_x64(True):
        tx = adagrad_jax.adagrad(**hp)
        w = jnp.asarray(w0, jnp.float64)
        state = tx.init(w)
        update = jax.jit(tx.update)
        for g in grads:
            u, state = update(jnp.asarray(g, jnp.float64), state, w)
            w = optax.apply_updates(w, u)
            assert not bool(jnp.any(jnp.isnan(w)))
        np.testing.assert_allclose(w, ref_w[-1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state[1].sum_of_squares, ref_acc[-1], rtol=1e-12)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(dtype=st.sampled_from([jnp.bfloat16, jnp.float16, jnp.float32]),
                  shape=shapes, scale=st.sampled_from([1e-3, 1.0, 100.0]),
                  seed=st.integers(0, 2**16))
def test_low_precision_property(dtype, shape, scale, seed):
    """Any float dtype: float32 state, updates in the gradient dtype, within rounding."""
    rng = np.random.default_rng(seed)
    grads = [jnp.asarray(rng.normal(size=shape) * scale, dtype) for _ in range(3)]
    tx = adagrad_jax.scale_by_adagrad(eps=1e-8)
    state = tx.init(jnp.zeros(shape, dtype))
    for g in grads:
        u, state = tx.update(g, state)
    assert u.dtype == dtype and state.sum_of_squares.dtype == jnp.float32
    exact = [np.asarray(g.astype(jnp.float32), np.float64) for g in grads]
    acc = sum(g * g for g in exact)
    np.testing.assert_allclose(state.sum_of_squares, acc, rtol=1e-6)
    expected = exact[-1] / (np.sqrt(acc) + 1e-8)
    tol = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(u.astype(jnp.float32)), expected, rtol=tol, atol=tol)


# --- errors --------------------------------------------------------------------

@pytest.mark.parametrize("factory, kwargs, arg", [
    (adagrad_jax.adagrad, {"learning_rate": -0.1}, "learning_rate"),
    (adagrad_jax.adagrad, {"eps": -1.0}, "eps"),
    (adagrad_jax.adagrad, {"eps_root": -1e-3}, "eps_root"),
    (adagrad_jax.adagrad, {"initial_accumulator_value": -0.5}, "initial_accumulator_value"),
    (adagrad_jax.adagrad, {"weight_decay": -0.01}, "weight_decay"),
    (adagrad_jax.adagrad, {"eps": float("nan")}, "eps"),
    (adagrad_jax.scale_by_adagrad, {"eps": -1.0}, "eps"),
    (adagrad_jax.scale_by_adagrad, {"initial_accumulator_value": -2}, "initial_accumulator_value"),
    (adagrad_jax.scale_by_adagrad, {"accumulator_dtype": jnp.int32}, "accumulator_dtype"),
    (adagrad_jax.adagrad, {"accumulator_dtype": jnp.complex64}, "accumulator_dtype"),
    (schedules.inverse_time_decay, {"init_value": 0.1, "decay_rate": -1.0}, "decay_rate"),
    (schedules.inverse_sqrt_decay, {"init_value": -1.0}, "init_value"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(factory, kwargs, arg):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{factory.__name__}({arg}=")
    assert repr(kwargs[arg])[:6] in message or str(kwargs[arg])[:6] in message


@pytest.mark.parametrize("kwargs, pattern", [
    ({"learning_rate": "0.1"}, r"adagrad\(learning_rate='0.1'\): .*number or an optax schedule"),
    ({"eps": None}, r"adagrad\(eps=None\): eps must be a number"),
    ({"accumulator_dtype": "not-a-dtype"}, r"adagrad\(accumulator_dtype='not-a-dtype'\)"),
    ({"lr": 0.1}, r"adagrad\(lr=0.1\): unknown argument 'lr'.*Did you mean 'learning_rate'"),
    ({"weight_decay": True}, r"adagrad\(weight_decay=True\)"),
])
def test_wrong_types_raise_type_error(kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        adagrad_jax.adagrad(**kwargs)


def test_integer_parameters_rejected_at_init():
    tx = adagrad_jax.adagrad()
    with pytest.raises(TypeError, match=r"adagrad: parameter \['step'\] has dtype int32"):
        tx.init({"w": jnp.zeros(2), "step": jnp.zeros((), jnp.int32)})


def test_mismatched_gradient_tree_names_first_differing_path():
    tx = adagrad_jax.adagrad()
    state = tx.init({"dense": {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)}})
    with pytest.raises(ValueError, match=r"state.sum_of_squares has a leaf at "
                                         r"\['dense'\]\['bias'\] that updates lacks"):
        tx.update({"dense": {"kernel": jnp.zeros(2), "b": jnp.zeros(1)}}, state)
    with pytest.raises(ValueError, match=r"\['dense'\]\['bias'\] that updates lacks"):
        tx.update({"dense": {"kernel": jnp.zeros(2)}}, state)


def test_errors_leave_state_and_params_untouched():
    """A failed update raises before computing anything: inputs are unchanged."""
    tx = adagrad_jax.adagrad()
    params = {"a": jnp.ones(2)}
    state = tx.init(params)
    before = jax.tree.map(np.array, (params, state))
    with pytest.raises(ValueError, match=r"updates has a leaf at \['extra'\]"):
        tx.update({"a": jnp.ones(2), "extra": jnp.ones(2)}, state, params)
    jax.tree.map(np.testing.assert_array_equal, (params, state), before)


def test_traced_hyperparameters_are_accepted_unchecked():
    """inject_hyperparams passes arrays (traced under jit); no Python bool is taken."""
    tx = optax.inject_hyperparams(adagrad_jax.adagrad)(
        learning_rate=0.1, eps=1e-8, weight_decay=0.01)
    params = jnp.ones(3)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    u, state = step(jnp.ones(3), tx.init(params), params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.2)
    u2, _ = step(jnp.ones(3), state, params)
    assert bool(jnp.all(u2 < 0)) and bool(jnp.all(jnp.isfinite(u)))
