"""`packed_adagrad`: the same numbers as the per-leaf `adagrad`, and its API.

Source of truth for every number here: `adagrad_jax.adagrad` followed by
`optax.apply_updates`, run leaf by leaf on the same parameters and gradients.
The packed step runs that transformation's own update on flat buffers, so the
results must be bit-for-bit equal, not merely close.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax

NUM_STEPS = 4


def make_tree(dtype=jnp.float32, seed=0):
    """Leaves of several shapes, a scalar, an empty leaf and a None."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype)

    return {
        "w": draw((3, 4)),
        "b": draw((4,)),
        "deep": [draw(()), draw((2, 1, 3))],
        "empty": draw((0, 5)),
        "none": None,
    }


def gradients(params, step):
    """Deterministic gradients; every third step is all zeros."""
    scale = 0.0 if step % 3 == 2 else 1.0 + step

    def leaf(p):
        x = jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + 0.7 * step).reshape(p.shape)
        return (scale * x).astype(p.dtype)

    return jax.tree.map(leaf, params)


def run_both(params, *, steps=NUM_STEPS, interleave=True, grad_buffer=True, **hyper):
    """Params and accumulators after `steps` steps of the packed and per-leaf paths."""
    opt = adagrad_jax.packed_adagrad(**hyper, interleave=interleave, grad_buffer=grad_buffer)
    tx = adagrad_jax.adagrad(**hyper)
    state = opt.init(params)
    opt_state = tx.init(params)
    packed_step = jax.jit(opt.step, donate_argnums=0)

    @jax.jit
    def reference_step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = params
    for t in range(steps):
        g = gradients(params, t)
        state = packed_step(state, g)
        p, opt_state = reference_step(p, opt_state, g)
    return opt, state, p, opt_state[1].sum_of_squares


def assert_trees_identical(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


HYPERPARAMETERS = {
    "defaults": {},
    "optax_like": {"learning_rate": 0.1, "initial_accumulator_value": 0.1, "eps": 0.0, "eps_root": 1e-7},
    "weight_decay": {"learning_rate": 0.05, "eps": 1e-3, "weight_decay": 0.01},
    "schedule": {"learning_rate": optax.linear_schedule(0.1, 0.01, 5), "eps": 1e-10},
    "zero_guard": {"learning_rate": 1.0, "eps": 0.0},  # 0/0 on the zero steps
}


@pytest.mark.parametrize("hyper", HYPERPARAMETERS.values(), ids=HYPERPARAMETERS.keys())
@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "split"])
def test_same_numbers_as_per_leaf_adagrad(hyper, interleave):
    """Formula: `adagrad(**hyper)` then `optax.apply_updates`, bit for bit."""
    params = make_tree()
    opt, state, p, sums = run_both(params, interleave=interleave, **hyper)
    assert_trees_identical(opt.params(state), p)
    assert_trees_identical(opt.sum_of_squares(state), sums)
    assert int(state.count) == NUM_STEPS


@pytest.mark.parametrize(
    "dtype", [jnp.bfloat16, jnp.float16, jnp.complex64], ids=["bf16", "f16", "c64"]
)
def test_same_numbers_for_other_dtypes(dtype):
    """Low precision keeps a float32 G; complex uses re^2 + im^2 (per-leaf rule)."""
    params = make_tree(dtype)
    opt, state, p, sums = run_both(params, learning_rate=0.1, weight_decay=0.01)
    assert_trees_identical(opt.params(state), p)
    assert_trees_identical(opt.sum_of_squares(state), sums)


def test_same_numbers_for_float64():
    with jax.enable_x64(True):
        params = make_tree(jnp.float64)
        opt, state, p, sums = run_both(params, learning_rate=0.1)
        assert state.buffers[0][0].dtype == jnp.complex128
        assert_trees_identical(opt.params(state), p)
        assert_trees_identical(opt.sum_of_squares(state), sums)


def test_mixed_dtypes_many_leaves_same_numbers():
    """The multi-tensor path (many leaves, several groups) equals the per-leaf one."""
    rng = np.random.default_rng(1)
    params = {
        f"layer{i}": {
            "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16),
        }
        for i in range(30)
    }
    for grad_buffer in (True, False):
        opt, state, p, sums = run_both(params, grad_buffer=grad_buffer, learning_rate=0.1)
        assert len(state.buffers) == 2  # one per dtype, not one per leaf
        assert all((g is not None) == grad_buffer for g in state.grads)
        assert_trees_identical(opt.params(state), p)
        assert_trees_identical(opt.sum_of_squares(state), sums)


def test_layout_groups_by_dtype_and_interleaves_what_fits():
    params = {
        "f32": jnp.ones(3),
        "bf16": jnp.ones(2, jnp.bfloat16),
        "c64": jnp.ones(2, jnp.complex64),
        "f32_again": jnp.ones((2, 2)),
    }
    state = adagrad_jax.packed_adagrad().init(params)
    groups = {g.param_dtype.name: g for g in state.layout.groups}
    assert set(groups) == {"float32", "bfloat16", "complex64"}
    assert groups["float32"].size == 7
    assert groups["float32"].interleaved and groups["bfloat16"].interleaved
    assert not groups["complex64"].interleaved  # three reals per element
    dtypes = [tuple(b.dtype.name for b in bufs) for bufs in state.buffers]
    assert sorted(dtypes) == [("complex64",), ("complex64",), ("complex64", "float32")]
    # A bfloat16 accumulator has no complex counterpart: two buffers.
    narrow = adagrad_jax.packed_adagrad(accumulator_dtype=jnp.bfloat16).init(params)
    assert not any(g.interleaved for g in narrow.layout.groups)


def test_views_have_the_parameters_tree_shapes_and_dtypes():
    params = make_tree(jnp.bfloat16)
    opt = adagrad_jax.packed_adagrad()
    state = opt.init(params)
    assert_trees_identical(opt.params(state), params)  # init copies values exactly
    sums = opt.sum_of_squares(state)
    assert jax.tree.structure(sums) == jax.tree.structure(params)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(sums))


def test_state_structure_and_dtypes_never_change():
    params = make_tree()
    opt = adagrad_jax.packed_adagrad(learning_rate=optax.constant_schedule(0.1))
    state0 = opt.init(params)
    state1 = jax.jit(opt.step)(state0, gradients(params, 0))
    assert jax.tree.structure(state0) == jax.tree.structure(state1)
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state1)):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)


def test_init_copies_so_donation_keeps_the_callers_params():
    params = {"w": jnp.arange(4.0)}  # a single leaf: the one case without a concat
    for interleave in (True, False):
        opt = adagrad_jax.packed_adagrad(interleave=interleave)
        state = opt.init(params)
        jax.jit(opt.step, donate_argnums=0)(state, {"w": jnp.ones(4)})
        assert not params["w"].is_deleted()
        np.testing.assert_array_equal(params["w"], np.arange(4.0))


def test_gradients_through_the_views_match_gradients_of_the_tree():
    params = make_tree()
    opt = adagrad_jax.packed_adagrad()
    state = opt.init(params)

    def loss(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.cos(p["deep"][1])) + p["deep"][0]

    assert_trees_identical(jax.grad(loss)(opt.params(state)), jax.grad(loss)(params))


def test_eval_shape_of_init():
    params = make_tree()
    opt = adagrad_jax.packed_adagrad()
    shapes = jax.eval_shape(opt.init, params)
    real = opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    assert shapes.layout == real.layout


def test_checkpoint_round_trip_through_numpy():
    """The state's leaves are arrays; the layout comes back from init(params)."""
    params = make_tree()
    opt = adagrad_jax.packed_adagrad(learning_rate=0.1)
    state = opt.step(opt.init(params), gradients(params, 0))
    saved = [np.asarray(x) for x in jax.tree.leaves(state)]
    template = opt.init(params)
    restored = jax.tree.unflatten(jax.tree.structure(template), [jnp.asarray(x) for x in saved])
    g = gradients(params, 1)
    assert_trees_identical(opt.params(opt.step(restored, g)), opt.params(opt.step(state, g)))


# --- errors -----------------------------------------------------------------


@pytest.mark.parametrize("arg", ["learning_rate", "initial_accumulator_value", "eps",
                                 "eps_root", "weight_decay"])
def test_negative_hyperparameter_names_function_argument_and_value(arg):
    with pytest.raises(ValueError, match=rf"packed_adagrad\({arg}=-1\.0\): {arg} must be"):
        adagrad_jax.packed_adagrad(**{arg: -1.0})


@pytest.mark.parametrize("flag", ["interleave", "grad_buffer"])
def test_flags_must_be_bool(flag):
    with pytest.raises(TypeError, match=rf"packed_adagrad\({flag}=1\): {flag} must be True or False"):
        adagrad_jax.packed_adagrad(**{flag: 1})


def test_unknown_argument_suggests_the_closest():
    with pytest.raises(TypeError, match="Did you mean 'interleave'"):
        adagrad_jax.packed_adagrad(interleaved=True)


def test_flags_are_keyword_only():
    with pytest.raises(TypeError, match="packed_adagrad"):
        adagrad_jax.packed_adagrad(0.1, 0.0, 1e-8, 0.0)


def test_integer_parameters_are_refused_at_init():
    with pytest.raises(TypeError, match=r"packed_adagrad: parameter \['n'\] has dtype int32"):
        adagrad_jax.packed_adagrad().init({"n": jnp.arange(3), "w": jnp.ones(2)})


def test_gradient_tree_mismatch_names_the_path():
    opt = adagrad_jax.packed_adagrad()
    state = opt.init({"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"packed_adagrad: .*grads.*\['b'\]"):
        opt.step(state, {"a": jnp.ones(2), "c": jnp.ones(3)})


@pytest.mark.parametrize(
    "bad", [jnp.ones(4), jnp.ones(3, jnp.bfloat16)], ids=["shape", "dtype"]
)
def test_gradient_shape_or_dtype_mismatch_names_the_path(bad):
    opt = adagrad_jax.packed_adagrad()
    state = opt.init({"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"packed_adagrad.step: grads\['b'\] has shape"):
        opt.step(state, {"a": jnp.ones(2), "b": bad})


# --- non-finite gradients ------------------------------------------------------------


def _poisoned_gradients(params, step):
    """`gradients`, with a NaN (step 1) and an inf (step 3) in single coordinates."""
    g = gradients(params, step)
    if step == 1:
        g["layer0"]["w"] = g["layer0"]["w"].at[2, 3].set(jnp.nan)
    if step == 3:
        g["layer1"]["b"] = g["layer1"]["b"].at[5].set(-jnp.inf)
    return g


@pytest.mark.parametrize("nonfinite", ["skip_coordinate", "skip_step"])
@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "split"])
def test_nonfinite_policies_same_numbers_as_per_leaf_adagrad(nonfinite, interleave):
    """Before: packed_adagrad had no `nonfinite`; one NaN poisoned its coordinate for
    good. Formula: `adagrad(nonfinite=...)` then `optax.apply_updates`, over two
    dtype groups of several leaves, with a schedule (so a skipped step's count
    matters) and weight decay (so a zero gradient still moves w). Eagerly the two
    run the same operations, so they agree bit for bit; the jitted, donated packed
    step agrees with them to float32 rounding (XLA fuses the select of the skip
    policies differently in the two programs; bfloat16 leaves, whose one-ulp
    differences grow through G, are compared for finiteness only)."""
    rng = np.random.default_rng(2)
    params = {
        f"layer{i}": {
            "w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16),
        }
        for i in range(3)
    }
    hyper = dict(learning_rate=optax.linear_schedule(0.1, 0.01, 6), weight_decay=0.01,
                 nonfinite=nonfinite)
    opt = adagrad_jax.experimental.packed_adagrad(**hyper, interleave=interleave)
    tx = adagrad_jax.adagrad(**hyper)
    state, jitted, opt_state, p = opt.init(params), opt.init(params), tx.init(params), params
    packed_step = jax.jit(opt.step, donate_argnums=0)
    for t in range(5):
        g = _poisoned_gradients(params, t)
        before = opt.params(state)["layer0"]["w"]
        state = opt.step(state, g)
        jitted = packed_step(jitted, g)
        if t == 1:  # the NaN's coordinate stays; with skip_coordinate the others move
            after = opt.params(state)["layer0"]["w"]
            assert after[2, 3] == before[2, 3]
            assert bool(after[0, 0] != before[0, 0]) == (nonfinite == "skip_coordinate")
        u, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, u)
        assert_trees_identical(opt.params(state), p)
        assert_trees_identical(opt.sum_of_squares(state), opt_state.inner_state[1].sum_of_squares)
        for a, e in zip(jax.tree.leaves(opt.params(jitted)), jax.tree.leaves(p)):
            if a.dtype == jnp.float32:
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
            assert bool(jnp.all(jnp.isfinite(a)))
    for s in (state, jitted):
        assert int(s.nonfinite_steps) == int(opt_state.nonfinite_steps) == 2
        assert int(s.count) == (3 if nonfinite == "skip_step" else 5)
    for leaf in jax.tree.leaves((opt.params(state), opt.sum_of_squares(state))):
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_nonfinite_propagate_has_no_counter_and_a_mismatched_state_is_refused():
    params = {"w": jnp.ones(3)}
    plain = adagrad_jax.experimental.packed_adagrad(0.1)
    state = plain.init(params)
    assert state.nonfinite_steps is None
    state = plain.step(state, {"w": jnp.array([1.0, jnp.nan, 1.0])})
    assert bool(jnp.isnan(plain.params(state)["w"][1]))  # the rule as written
    skipping = adagrad_jax.experimental.packed_adagrad(0.1, nonfinite="skip_step")
    with pytest.raises(TypeError, match=r"packed_adagrad\(nonfinite='skip_step'\).step: the state"):
        skipping.step(plain.init(params), {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"packed_adagrad\(nonfinite='skip'\): nonfinite must be"):
        adagrad_jax.experimental.packed_adagrad(0.1, nonfinite="skip")
