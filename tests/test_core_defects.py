"""Defects of the shared core found by probing v0.1 with bad and extreme input (issue 11).

Each test fails on the v0.1 code and names the defect it covers. Bad-input
cases run twice: under the strict promotion of `conftest.py` and under JAX's
default promotion (dtype promotion "standard", rank promotion "allow"), which
is what users run and which hides broadcasting and integer truncation.
"""

from __future__ import annotations

import decimal
import fractions

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import compat, schedules
from adagrad_jax._src.core import checks, trees


@pytest.fixture(params=["strict", "default"])
def promotion(request):
    """Runs a test under strict promotion (conftest) and under JAX's defaults."""
    if request.param == "strict":
        yield request.param
        return
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield request.param


def snapshot(tree):
    return jax.tree.map(np.array, tree)


def assert_unchanged(tree, before):
    jax.tree.map(np.testing.assert_array_equal, tree, before)


# --- 1. NaN from a zero gradient with a tiny epsilon ----------------------------

SUBNORMAL_FLOAT32 = {
    "adagrad(eps=1e-40)": lambda: adagrad_jax.adagrad(0.1, eps=1e-40),
    "tf1_adagrad(0.1, 1e-40)": lambda: compat.tf1_adagrad(0.1, 1e-40),
    "adagrad(eps=0, eps_root=6.9e-39)": lambda: adagrad_jax.adagrad(eps=0, eps_root=6.9e-39),
    "adagrad(eps=0, tau=1e-40)": lambda: adagrad_jax.adagrad(
        0.1, initial_accumulator_value=1e-40, eps=0.0),
    "all three subnormal": lambda: adagrad_jax.adagrad(
        0.1, initial_accumulator_value=1e-40, eps=1e-40, eps_root=1e-40),
    "keras_adagrad(tau=0, epsilon=1e-40)": lambda: compat.keras_adagrad(
        0.1, initial_accumulator_value=0.0, epsilon=1e-40),
    "torch_adagrad(eps=1e-40)": lambda: compat.torch_adagrad(0.1, eps=1e-40),
}


@pytest.mark.parametrize("make", SUBNORMAL_FLOAT32.values(), ids=SUBNORMAL_FLOAT32.keys())
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_zero_gradient_with_subnormal_constants_is_exactly_zero(make, jit):
    """1e-40 and 6.9e-39 are subnormal in float32 (smallest normal 1.18e-38):
    positive in NumPy, but XLA flushes them to 0, so the denominator is 0 and
    only the zero guard keeps 0 / 0 from giving NaN (ARCHITECTURE.md, rule 1)."""
    tx = make()
    update = jax.jit(tx.update) if jit else tx.update
    w = jnp.zeros(2)
    u, _ = update(jnp.zeros(2), tx.init(w), w)
    np.testing.assert_array_equal(u, [0.0, 0.0])


@pytest.mark.parametrize("kwargs", [
    {"eps": 1e-320},
    {"eps": 0.0, "eps_root": 1e-310},
    {"eps": 0.0, "initial_accumulator_value": 1e-310},
])
def test_zero_gradient_with_subnormal_constants_in_float64(kwargs):
    """float64's smallest normal number is 2.2e-308: 1e-310 and 1e-320 are subnormal."""
    with jax.enable_x64(True):
        tx = adagrad_jax.adagrad(0.1, **kwargs)
        w = jnp.zeros(2, jnp.float64)
        for update in (tx.update, jax.jit(tx.update)):
            u, _ = update(jnp.zeros(2, jnp.float64), tx.init(w), w)
            np.testing.assert_array_equal(u, [0.0, 0.0])


def test_subnormal_eps_keeps_nonzero_coordinates_exact():
    """g = (0, 3), eps = 1e-40 (a flushed 0): -0.1 * 3 / sqrt(9) = -0.1 and 0."""
    tx = adagrad_jax.adagrad(0.1, eps=1e-40)
    u, _ = jax.jit(tx.update)(jnp.array([0.0, 3.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, [0.0, -0.1], rtol=1e-7)


def test_normal_constant_beside_subnormal_tau_needs_no_guard():
    """tau = 1e-40 (flushed) with eps = 1e-8 (normal): 0 / 1e-8 = 0; 3 / (3 + 1e-8)."""
    tx = adagrad_jax.scale_by_adagrad(1e-40, eps=1e-8)
    u, _ = jax.jit(tx.update)(jnp.array([0.0, 3.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, [0.0, 1.0], rtol=1e-7)


@pytest.mark.parametrize("value, dtype, expected", [
    (1e-40, jnp.float32, False),     # subnormal in float32
    (6.9e-39, jnp.float32, False),   # subnormal (smallest normal 1.18e-38)
    (1.2e-38, jnp.float32, True),    # just above the smallest normal
    (1e-8, jnp.float32, True),
    (1e-40, jnp.bfloat16, False),    # bfloat16 has float32's exponent range
    (1e-8, jnp.float16, False),      # rounds to 0 in float16
    (5e-5, jnp.float16, False),      # subnormal in float16 (smallest normal 6.1e-5)
    (1e-4, jnp.float16, True),
    (1e-320, jnp.float64, False),
    (1e-300, jnp.float64, True),
    (0.0, jnp.float32, False),
])
def test_is_positive_in_judges_against_the_smallest_normal_number(value, dtype, expected):
    assert checks.is_positive_in(value, dtype) is expected


def test_is_positive_in_never_judges_jax_arrays():
    """A JAX value may be traced (inject_hyperparams): the guard stays compiled in."""
    assert checks.is_positive_in(jnp.array(1.0), jnp.float32) is False


# --- 2. leaf shapes never checked against the state ------------------------------

def dense_optimizers():
    return {
        "adagrad": adagrad_jax.adagrad(0.1),
        "adagrad(weight_decay)": adagrad_jax.adagrad(0.1, weight_decay=0.1),
        "scale_by_adagrad": adagrad_jax.scale_by_adagrad(),
        "torch_adagrad": compat.torch_adagrad(0.1, weight_decay=0.1),
        "torch_adagrad(maximize)": compat.torch_adagrad(0.1, maximize=True),
        "keras_adagrad": compat.keras_adagrad(0.1, weight_decay=0.1),
        "tf1_adagrad": compat.tf1_adagrad(0.1),
    }


SHAPE_CASES = {
    # name: (parameter shape, gradient shape)
    "(3,) for a scalar": ((), (3,)),
    "(1,) for (3,)": ((3,), (1,)),
    "(4,) for (3,)": ((3,), (4,)),
    "() for (3,)": ((3,), ()),
    "(3, 1) for (3,)": ((3,), (3, 1)),
}


@pytest.mark.parametrize("name", list(dense_optimizers()))
@pytest.mark.parametrize("shapes", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gradient_of_another_shape_is_refused_naming_the_leaf(promotion, name, shapes, jit):
    """v0.1 broadcast (1,) over (3,) and turned a scalar's state into (3,)
    silently under default promotion; (4,) vs (3,) failed naming no leaf."""
    param_shape, grad_shape = shapes
    tx = dense_optimizers()[name]
    params = {"dense": {"w": jnp.ones(param_shape)}, "b": jnp.ones(2)}
    grads = {"dense": {"w": jnp.ones(grad_shape)}, "b": jnp.ones(2)}
    state = tx.init(params)
    before = snapshot((params, state))
    update = jax.jit(tx.update) if jit else tx.update
    pattern = (rf"\['dense'\]\['w'\] has shape {_re(grad_shape)} but"
               rf" .*\['dense'\]\['w'\] has shape {_re(param_shape)}")
    with pytest.raises(ValueError, match=pattern):
        update(grads, state, params)
    assert_unchanged((params, state), before)


def _re(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_shape_error_message_names_function_path_and_both_shapes():
    tx = adagrad_jax.adagrad(0.1)
    state = tx.init({"a": jnp.zeros(())})
    with pytest.raises(ValueError) as info:
        tx.update({"a": jnp.ones(3)}, state)
    assert str(info.value).startswith(
        "adagrad: updates['a'] has shape (3,) but state.sum_of_squares['a']"
        " has shape ().")  # names the function the user called


def test_weight_decay_checks_updates_against_params(promotion):
    """Coupled decay adds wd * params before the state sees the gradient: a (1,)
    gradient for a (3,) parameter would broadcast to (3,) and pass the state check."""
    tx = adagrad_jax.adagrad(0.1, weight_decay=0.1)
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"adagrad: updates\['w'\] has shape \(1,\) but"
                                         r" params\['w'\] has shape \(3,\)"):
        tx.update({"w": jnp.ones(1)}, state, {"w": jnp.ones(3)})


@pytest.mark.parametrize("grad_shape", [(1,), (4,), ()])
def test_packed_step_refuses_other_shapes(promotion, grad_shape):
    opt = adagrad_jax.packed_adagrad(0.1)
    state = opt.init({"a": jnp.ones(3), "b": jnp.ones(2)})
    before = snapshot(state)
    step = jax.jit(opt.step, donate_argnums=0)
    with pytest.raises(ValueError, match=r"packed_adagrad.step: grads\['a'\] has shape"):
        step(state, {"a": jnp.ones(grad_shape), "b": jnp.ones(2)})
    assert_unchanged(state, before)  # Refused at trace time: nothing was donated.


def test_check_same_shapes_helper():
    """The shared helper: paths, root leaves, None leaves and custom shapes."""
    check = trees.check_same_shapes
    check("f", "g", {"a": jnp.ones(2), "n": None}, "s", {"a": jnp.ones(2), "n": None})
    with pytest.raises(ValueError, match=r"^f: g has shape \(2,\) but s has shape \(\)"):
        check("f", "g", jnp.ones(2), "s", jnp.ones(()))
    with pytest.raises(ValueError, match=r"s has a leaf at \['b'\] that g lacks"):
        check("f", "g", {"a": jnp.ones(2)}, "s", {"a": jnp.ones(2), "b": jnp.ones(1)})
    # A (k, D) row gradient against a (V, D) table: compare row shapes only.
    rows = {"table": (jnp.zeros(5, jnp.int32), jnp.ones((5, 4)))}
    tables = {"table": jax.ShapeDtypeStruct((100, 3), jnp.float32)}
    with pytest.raises(ValueError, match=r"rows\['table'\] has shape \(4,\) but"
                                         r" params\['table'\] has shape \(3,\)"):
        check("f", "rows", rows, "params", tables, is_leaf=lambda x: isinstance(x, tuple),
              shape_a=lambda r: r[1].shape[1:], shape_b=lambda p: p.shape[1:])


# --- 3. integer and bool gradients silently truncated -----------------------------

@pytest.mark.parametrize("name", list(dense_optimizers()))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_integer_and_bool_gradients_are_refused(promotion, name, dtype, jit):
    """v0.1 cast the update to the gradient's integer dtype (0 instead of -0.0707)."""
    tx = dense_optimizers()[name]
    params = {"w": jnp.ones(2), "n": {"k": jnp.ones(3)}}
    grads = {"w": jnp.ones(2), "n": {"k": jnp.ones(3, dtype)}}
    state = tx.init(params)
    before = snapshot((params, state))
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(TypeError, match=rf"updates\['n'\]\['k'\] has dtype"
                                        rf" {jnp.dtype(dtype).name}; Adagrad needs floating"):
        update(grads, state, params)
    assert_unchanged((params, state), before)


def test_packed_integer_gradient_is_the_same_type_error(promotion):
    opt = adagrad_jax.packed_adagrad(0.1)
    state = opt.init({"w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"packed_adagrad.step: grads\['w'\] has dtype int32"):
        opt.step(state, {"w": jnp.ones(2, jnp.int32)})


def test_python_scalar_gradients_are_floats():
    """A Python float gradient is a float32 scalar, as jnp.asarray makes it; a
    Python int is an integer gradient and refused."""
    tx = adagrad_jax.adagrad(0.1)
    state = tx.init({"a": jnp.zeros(())})
    u, _ = tx.update({"a": 2.0}, state)
    np.testing.assert_allclose(u["a"], -0.1, rtol=1e-6)
    with pytest.raises(TypeError, match=r"updates\['a'\] has dtype int32"):
        tx.update({"a": 2}, state)


# --- 4. hyperparameters given as concrete JAX arrays ------------------------------

CONCRETE_BAD = [
    # (constructor, kwargs, argument, error type, message fragment)
    (adagrad_jax.adagrad, {"learning_rate": jnp.array(-0.1)}, "learning_rate", ValueError,
     r"adagrad\(learning_rate=Array\(-0.1\)\): learning_rate must be finite and >= 0\."),
    (adagrad_jax.adagrad, {"initial_accumulator_value": jnp.array(-1.0)},
     "initial_accumulator_value", ValueError, r"must be finite and >= 0"),
    (adagrad_jax.adagrad, {"learning_rate": jnp.array([0.1])}, "learning_rate", ValueError,
     r"adagrad\(learning_rate=Array\(\[0.1\]\)\): learning_rate must be a scalar, got shape \(1,\)"),
    (adagrad_jax.adagrad, {"eps": jnp.array(jnp.nan)}, "eps", ValueError, r"finite"),
    (adagrad_jax.adagrad, {"eps_root": jnp.array(jnp.inf)}, "eps_root", ValueError, r"finite"),
    (adagrad_jax.adagrad, {"weight_decay": jnp.array(-0.01)}, "weight_decay", ValueError,
     r">= 0"),
    (adagrad_jax.adagrad, {"learning_rate": jnp.array(0.1 + 0j)}, "learning_rate", TypeError,
     r"real scalar .* got dtype complex64"),
    (adagrad_jax.adagrad, {"eps": jnp.array(True)}, "eps", TypeError, r"got dtype bool"),
    (adagrad_jax.adagrad, {"eps": np.array([1e-8])}, "eps", ValueError, r"scalar"),
    (adagrad_jax.adagrad, {"eps": np.bool_(True)}, "eps", TypeError, r"got dtype bool"),
    (adagrad_jax.scale_by_adagrad, {"eps": jnp.array(-1.0)}, "eps", ValueError, r">= 0"),
    (adagrad_jax.scale_by_adagrad, {"initial_accumulator_value": jnp.ones((2, 2))},
     "initial_accumulator_value", ValueError, r"scalar"),
    (schedules.inverse_time_decay, {"init_value": 0.1, "decay_rate": jnp.array(-0.5)},
     "decay_rate", ValueError, r"inverse_time_decay\(decay_rate=Array\(-0.5\)\)"),
    (schedules.inverse_sqrt_decay, {"init_value": jnp.array(-1.0)}, "init_value", ValueError,
     r">= 0"),
    (compat.torch_adagrad, {"lr_decay": jnp.array(-0.1)}, "lr_decay", ValueError, r">= 0"),
    (compat.torch_adagrad, {"lr": jnp.array([0.1, 0.2])}, "lr", ValueError, r"scalar"),
    (compat.keras_adagrad, {"epsilon": jnp.array(-1e-7)}, "epsilon", ValueError, r">= 0"),
    (compat.tf1_adagrad, {"learning_rate": 0.1, "initial_accumulator_value": jnp.array(0.0)},
     "initial_accumulator_value", ValueError, r"> 0"),
    (adagrad_jax.packed_adagrad, {"weight_decay": jnp.array(-0.1)}, "weight_decay",
     ValueError, r">= 0"),
    (adagrad_jax.packed_adagrad, {"learning_rate": jnp.array([0.1])}, "learning_rate",
     ValueError, r"scalar"),
]


@pytest.mark.parametrize("factory, kwargs, arg, error, pattern", CONCRETE_BAD,
                         ids=[f"{c[0].__name__}-{c[2]}-{i}" for i, c in enumerate(CONCRETE_BAD)])
def test_concrete_array_hyperparameters_are_checked_like_numbers(
        promotion, factory, kwargs, arg, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        factory(**kwargs)
    assert str(info.value).startswith(f"{factory.__name__}({arg}=")


def test_negative_array_learning_rate_no_longer_climbs():
    """v0.1 accepted jnp.array(-0.1) and moved w = 1 up the gradient of w**2."""
    with pytest.raises(ValueError, match="learning_rate"):
        adagrad_jax.adagrad(learning_rate=jnp.array(-0.1))
    tx = adagrad_jax.adagrad(learning_rate=jnp.array(0.1))  # a valid array is fine
    u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.ones(1)))
    np.testing.assert_allclose(u, [-0.1], rtol=1e-6)


@pytest.mark.parametrize("bad, error", [
    (jnp.ones(2), ValueError), (jnp.array(1 + 0j), TypeError), (jnp.array(True), TypeError)])
def test_traced_hyperparameters_are_checked_for_shape_and_dtype(bad, error):
    """Shapes and dtypes are known while tracing: refused even when traced."""
    @jax.jit
    def build_and_step(lr):
        tx = adagrad_jax.adagrad(lr)
        return tx.update(jnp.ones(2), tx.init(jnp.ones(2)))[0]

    with pytest.raises(error, match=r"adagrad\(learning_rate=\w*Tracer"):
        build_and_step(bad)
    # A traced real scalar is accepted unchecked, even a negative one.
    np.testing.assert_allclose(build_and_step(jnp.array(0.1)), [-0.1, -0.1], rtol=1e-6)


def test_inject_hyperparams_still_works_and_checks_concrete_values():
    """inject_hyperparams passes arrays: traced under jit (shape/dtype checks only),
    concrete when called eagerly (checked like numbers)."""
    tx = optax.inject_hyperparams(adagrad_jax.adagrad)(
        learning_rate=0.1, eps=1e-8, weight_decay=0.01)
    params = jnp.ones(3)
    state = tx.init(params)
    u, _ = jax.jit(tx.update)(jnp.ones(3), state, params)
    assert bool(jnp.all(u < 0))
    state.hyperparams["learning_rate"] = jnp.asarray(-0.1)
    with pytest.raises(ValueError, match=r"adagrad\(learning_rate=Array\(-0.1\)\)"):
        tx.update(jnp.ones(3), state, params)
    for make in (compat.torch_adagrad, compat.keras_adagrad, adagrad_jax.scale_by_adagrad):
        injected = optax.inject_hyperparams(make)()
        u, _ = jax.jit(injected.update)(jnp.ones(3), injected.init(params), params)
        assert bool(jnp.all(jnp.isfinite(u)))


@pytest.mark.parametrize("value, error, pattern", [
    (jnp.array(1.7), TypeError, r"f\(pad_id=Array\(1.7\)\): pad_id must be an integer, got dtype"),
    (1.0, TypeError, r"must be an integer, got float"),
    (True, TypeError, r"must be an integer, got bool"),
    (jnp.array([1]), ValueError, r"must be a scalar"),
    (jnp.array(-3), ValueError, r"f\(pad_id=Array\(-3\)\): pad_id must be in \[0, 10\]"),
    (11, ValueError, r"must be in \[0, 10\]"),
])
def test_check_integer_helper_for_row_ids(value, error, pattern):
    """The helper that row-id arguments (sparse_adagrad's pad_id) are to use:
    pad_id=jnp.array(1.7) treated id 1 as padding in v0.1."""
    with pytest.raises(error, match=pattern):
        checks.check_integer("f", "pad_id", value, low=0, high=10)


def test_check_integer_accepts_and_returns_integers():
    assert checks.check_integer("f", "i", np.int64(3), low=0) == 3
    assert checks.check_integer("f", "i", jnp.array(7, jnp.int32)) == 7
    assert jax.jit(lambda i: checks.check_integer("f", "i", i) is None)(1)


# --- 5. values that pass validation but can never work ----------------------------

@pytest.mark.parametrize("factory", [
    adagrad_jax.adagrad, adagrad_jax.scale_by_adagrad, adagrad_jax.packed_adagrad])
@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2, "float8_e4m3fn"])
def test_accumulator_dtype_narrower_than_16_bits_is_refused(factory, dtype):
    with pytest.raises(ValueError, match=rf"^{factory.__name__}\(accumulator_dtype=.*\):"
                                         r" accumulator_dtype must be at least 16 bits"):
        factory(accumulator_dtype=dtype)


@pytest.mark.parametrize("factory, kwargs, arg", [
    (adagrad_jax.adagrad, {"learning_rate": 1e308}, "learning_rate"),
    (adagrad_jax.adagrad, {"eps": 1e300}, "eps"),
    (adagrad_jax.adagrad, {"eps_root": 1e39}, "eps_root"),
    (adagrad_jax.adagrad, {"learning_rate": np.float64(1e308)}, "learning_rate"),
    (adagrad_jax.scale_by_adagrad, {"initial_accumulator_value": 10**39},
     "initial_accumulator_value"),
    (compat.torch_adagrad, {"lr": 1e308}, "lr"),
    (schedules.inverse_time_decay, {"init_value": 0.1, "decay_rate": 1e300}, "decay_rate"),
    (adagrad_jax.packed_adagrad, {"weight_decay": 1e300}, "weight_decay"),
])
def test_values_not_finite_in_float32_are_refused_without_x64(factory, kwargs, arg):
    """1e308 is finite in float64 but inf in float32, JAX's default float dtype:
    v0.1 accepted it and produced inf (learning_rate) or all-zero (eps) updates."""
    with pytest.raises(ValueError, match=rf"^{factory.__name__}\({arg}=.*\): {arg} must be"
                                         r" finite and >= 0 in float32"):
        factory(**kwargs)


def test_values_finite_in_float64_are_accepted_with_x64():
    with jax.enable_x64(True):
        tx = adagrad_jax.adagrad(learning_rate=1e300, eps=0.0)
        w = jnp.zeros(2, jnp.float64)
        u, _ = tx.update(jnp.array([1.0, 0.0]), tx.init(w), w)
        np.testing.assert_array_equal(u, [-1e300, 0.0])
    with pytest.raises(ValueError, match="learning_rate must be finite"), jax.enable_x64(True):
        adagrad_jax.adagrad(learning_rate=10**309)  # Not finite even in float64.


def test_largest_float32_value_is_accepted():
    adagrad_jax.adagrad(learning_rate=float(np.finfo(np.float32).max))


@pytest.mark.parametrize("value", [
    fractions.Fraction(1, 10), decimal.Decimal("0.1"), np.longdouble(0.1)],
    ids=["Fraction", "Decimal", "longdouble"])
@pytest.mark.parametrize("factory, arg", [
    (adagrad_jax.adagrad, "learning_rate"), (adagrad_jax.adagrad, "eps"),
    (compat.torch_adagrad, "lr_decay"), (schedules.inverse_sqrt_decay, "init_value"),
    (adagrad_jax.packed_adagrad, "learning_rate")])
def test_real_types_jax_cannot_hold_are_refused_at_construction(factory, arg, value):
    """v0.1 accepted them and failed at the first update with errors naming nothing."""
    with pytest.raises(TypeError, match=rf"^{factory.__name__}\({arg}=.*\): {arg} must be"
                                        rf" .*pass float\({arg}\)"):
        factory(**{arg: value})


@pytest.mark.parametrize("value", [
    np.float32(0.1), np.float64(0.1), np.array(0.1), np.int64(1), jnp.bfloat16(0.1),
    np.array(0.1, jnp.bfloat16), 1])
def test_numpy_and_jax_real_scalars_are_accepted(value):
    tx = adagrad_jax.adagrad(learning_rate=value)
    # A typed scalar (int64, bfloat16) meets float32 updates in optax's
    # scale_by_learning_rate, which strict promotion refuses: JAX's defaults here.
    with jax.numpy_dtype_promotion("standard"):
        u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    assert bool(jnp.all(u < 0))


# --- 6. Python floats as parameter leaves ----------------------------------------

def test_python_float_parameter_leaves():
    """optax accepts Python floats as leaves; v0.1 raised AttributeError at init."""
    tx = adagrad_jax.adagrad(0.1)
    params = {"a": 1.0, "b": jnp.ones(2)}
    state = tx.init(params)
    assert state[1].sum_of_squares["a"].dtype == jnp.float32
    assert state[1].sum_of_squares["a"].shape == ()
    grads = {"a": jnp.asarray(2.0), "b": jnp.ones(2)}
    updates, _ = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["a"], 0.9, rtol=1e-6)


def test_python_int_parameter_leaf_is_refused_naming_it():
    with pytest.raises(TypeError, match=r"adagrad: parameter \['n'\] has dtype int32"):
        adagrad_jax.adagrad(0.1).init({"n": 3, "w": 1.0})


def test_python_float_parameters_in_float64():
    with jax.enable_x64(True):
        state = adagrad_jax.scale_by_adagrad().init({"a": 1.0})
        assert state.sum_of_squares["a"].dtype == jnp.float64


def test_packed_init_on_shape_dtype_structs_gives_the_abstract_state():
    """v0.1 raised TypeError from float(); the state holds the parameters' values,
    so structs give the abstract state (a checkpoint-restore target)."""
    opt = adagrad_jax.packed_adagrad(0.1)
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(4, jnp.bfloat16)}
    structs = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    abstract = opt.init(structs)
    expected = jax.eval_shape(opt.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(expected)
    assert abstract.layout == opt.init(params).layout
    for a, e in zip(jax.tree.leaves(abstract), jax.tree.leaves(expected)):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (e.shape, e.dtype)


def test_packed_python_float_leaves():
    opt = adagrad_jax.packed_adagrad(0.1)
    state = opt.init({"a": 1.0, "b": jnp.ones(2)})
    state = opt.step(state, {"a": 2.0, "b": jnp.ones(2)})
    np.testing.assert_allclose(opt.params(state)["a"], 0.9, rtol=1e-6)
