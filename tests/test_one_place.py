"""One helper per job, one behaviour everywhere (issue 16).

- every bool flag goes through `checks.check_bool`: NumPy bools are flags,
  1 / "yes" / None are not, and the message names the function, argument and value;
- every zero guard goes through `numerics.guarded_divide`: a denominator below
  the smallest normal number counts as 0 (XLA flushes subnormals), so the
  regularized family survives subnormal constants as `adagrad` does;
- full-matrix Adagrad and Shampoo share one block layout (`beyond_diagonal/blocks.py`);
- the dense-only optimizers name a `RowSparse` gradient and the way to train the table;
- a coupled weight decay updated without params names the function and the decay.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import compat, experimental
from adagrad_jax._src.beyond_diagonal import blocks
from adagrad_jax._src.core import numerics

# --- 1. one bool check ---------------------------------------------------------


def _loss(rows, x):
    return jnp.sum(rows["emb"] * x)


def _loss_and_aux(rows, x):
    return _loss(rows, x), jnp.float32(1.0)


# (function name in messages, argument, builder taking the flag's value). Every
# public function of the package with a True/False argument.
FLAGS = {
    "adagrad(row_wise)": ("adagrad", "row_wise", lambda v: adagrad_jax.adagrad(0.1, row_wise=v)),
    "scale_by_adagrad(row_wise)": (
        "scale_by_adagrad",
        "row_wise",
        lambda v: adagrad_jax.scale_by_adagrad(row_wise=v),
    ),
    "sparse_adagrad(row_wise)": (
        "sparse_adagrad",
        "row_wise",
        lambda v: adagrad_jax.sparse_adagrad(0.1, row_wise=v),
    ),
    "scale_by_sparse_adagrad(row_wise)": (
        "scale_by_sparse_adagrad",
        "row_wise",
        lambda v: adagrad_jax.scale_by_sparse_adagrad(row_wise=v),
    ),
    "adagrad_da(warm_start)": (
        "adagrad_da",
        "warm_start",
        lambda v: adagrad_jax.adagrad_da(0.1, warm_start=v),
    ),
    "ftrl(warm_start)": ("ftrl", "warm_start", lambda v: adagrad_jax.ftrl(0.1, warm_start=v)),
    "adagrad_norm(per_leaf)": (
        "adagrad_norm",
        "per_leaf",
        lambda v: adagrad_jax.adagrad_norm(0.1, per_leaf=v),
    ),
    "scale_by_adagrad_norm(per_leaf)": (
        "scale_by_adagrad_norm",
        "per_leaf",
        lambda v: adagrad_jax.scale_by_adagrad_norm(per_leaf=v),
    ),
    "torch_adagrad(maximize)": (
        "torch_adagrad",
        "maximize",
        lambda v: compat.torch_adagrad(0.1, maximize=v),
    ),
    "value_and_row_grad(has_aux)": (
        "value_and_row_grad",
        "has_aux",
        lambda v: adagrad_jax.value_and_row_grad(_loss_and_aux if v else _loss, has_aux=v),
    ),
}
for flag in ("interleave", "grad_buffer"):
    FLAGS[f"packed_adagrad({flag})"] = (
        "packed_adagrad",
        flag,
        lambda v, flag=flag: experimental.packed_adagrad(0.1, **{flag: v}),
    )


def _run(made):
    """One step of a built optimizer (or one call of a value_and_row_grad)."""
    if isinstance(made, optax.GradientTransformation):
        params = {"emb": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
        grads = {"emb": jnp.array([[0.5, 1.0], [-2.0, 0.25]])}
        return made.update(grads, made.init(params), params)[0]
    if isinstance(made, experimental.PackedAdagrad):
        state = made.init({"emb": jnp.ones((2, 2))})
        return made.step(state, {"emb": jnp.ones((2, 2))})
    params = {"emb": jnp.ones((3, 2))}
    value, grads = made(params, {"emb": jnp.array([0, 2])}, jnp.ones((2, 2)))
    return value, grads["emb"].indices, grads["emb"].values


@pytest.mark.parametrize("case", FLAGS.values(), ids=FLAGS.keys())
@pytest.mark.parametrize("value", [True, False])
def test_numpy_bool_is_a_flag_with_the_same_result(case, value):
    """np.bool_(v) builds the optimizer that v builds: the same first step, bit for bit."""
    _, _, make = case
    expected = _run(make(value))
    got = _run(make(np.bool_(value)))
    jax.tree.map(np.testing.assert_array_equal, got, expected)


NOT_FLAGS = [1, 0, "yes", None, np.array(True), jnp.array(True)]


@pytest.mark.parametrize("case", FLAGS.values(), ids=FLAGS.keys())
@pytest.mark.parametrize("value", NOT_FLAGS, ids=["1", "0", "yes", "None", "np-array", "jnp-array"])
def test_anything_else_is_refused_naming_function_argument_and_value(case, value):
    """The one message of checks.check_bool: "f(arg=value): arg must be True or False."."""
    fn, arg, make = case
    message = f"{fn}({arg}={value!r}): {arg} must be True or False."
    with pytest.raises(TypeError, match=re.escape(message)):
        make(value)


# --- 2. one zero guard ----------------------------------------------------------

TINY32 = float(jnp.finfo(jnp.float32).tiny)  # 1.18e-38; 1e-40 is subnormal in float32


def test_guarded_divide_treats_subnormal_denominators_as_zero():
    """1 / 2 = 0.5; 1 / 0 and 1 / 1e-40 (subnormal, flushed by XLA) give the fallback;
    the smallest normal number itself is divided by (1 / 1.18e-38 = 8.5e37)."""
    num = jnp.ones(4)
    den = jnp.array([2.0, 0.0, 1e-40, TINY32], jnp.float32)
    out = numerics.guarded_divide(num, den, fallback=jnp.float32(-7.0))
    np.testing.assert_array_equal(out[:3], [0.5, -7.0, -7.0])
    np.testing.assert_allclose(out[3], 1 / TINY32, rtol=1e-6)


@pytest.mark.parametrize(
    "keeps_normal, guarded",
    [((), True), ((0.0,), True), ((1e-40,), True), ((jnp.float32(1e-8),), True), ((1e-8,), False)],
)
def test_guard_is_compiled_out_only_for_a_normal_python_constant(keeps_normal, guarded):
    """The rule: one Python constant that is normal in the denominator's dtype
    removes the select; 0, a subnormal or a JAX value (maybe traced) keep it."""

    def f(n, d):
        return numerics.guarded_divide(n, d, keeps_normal=keeps_normal)

    jaxpr = str(jax.make_jaxpr(f)(jnp.ones(2), jnp.ones(2)))
    assert ("select_n" in jaxpr) is guarded


def test_step_size_and_direction_share_the_guard():
    """adagrad_step_size (regularized family) and adagrad_direction (adagrad) give 0
    where sqrt(G) + eps is subnormal: G = (0, 4), eps = 1e-40 -> (0, 1/2) and (0, 3/2)."""
    s = jnp.array([0.0, 4.0])
    a = numerics.adagrad_step_size(1.0, s, 1e-40, 0.0, tau=0.0)
    d = numerics.adagrad_direction(jnp.array([0.0, 3.0]), s, 1e-40, 0.0, tau=0.0)
    np.testing.assert_array_equal(a, [0.0, 0.5])
    np.testing.assert_array_equal(d, [0.0, 1.5])


SUB = 1e-40  # subnormal in float32 (smallest normal 1.18e-38): XLA flushes it to 0
SUBNORMAL_REGULARIZED = {
    # proximal_adagrad: tau, eps (outside the root), eps_root (inside).
    "proximal(eps)": lambda: adagrad_jax.proximal_adagrad(0.1, eps=SUB),
    "proximal(tau)": lambda: adagrad_jax.proximal_adagrad(0.1, SUB, eps=0.0),
    "proximal(eps_root)": lambda: adagrad_jax.proximal_adagrad(0.1, eps=0.0, eps_root=SUB),
    "proximal(all three)": lambda: adagrad_jax.proximal_adagrad(0.1, SUB, SUB, eps_root=SUB),
    "proximal(all three, l1, l2)": lambda: adagrad_jax.proximal_adagrad(
        0.1, SUB, SUB, eps_root=SUB, l1=1e-3, l2=1e-3
    ),
    # adagrad_da: tau and eps (no eps_root).
    "adagrad_da(eps)": lambda: adagrad_jax.adagrad_da(0.1, 0.0, eps=SUB),
    "adagrad_da(tau)": lambda: adagrad_jax.adagrad_da(0.1, SUB),
    "adagrad_da(both)": lambda: adagrad_jax.adagrad_da(0.1, SUB, eps=SUB),
    "adagrad_da(both, cold)": lambda: adagrad_jax.adagrad_da(0.1, SUB, eps=SUB, warm_start=False),
    # ftrl: tau and beta, its epsilon (no eps, no eps_root).
    "ftrl(tau)": lambda: adagrad_jax.ftrl(0.1, initial_accumulator_value=SUB),
    "ftrl(beta)": lambda: adagrad_jax.ftrl(0.1, initial_accumulator_value=0.0, beta=SUB),
    "ftrl(both)": lambda: adagrad_jax.ftrl(0.1, initial_accumulator_value=SUB, beta=SUB),
    "ftrl(both, cold)": lambda: adagrad_jax.ftrl(
        0.1, initial_accumulator_value=SUB, beta=SUB, warm_start=False
    ),
}


@pytest.mark.parametrize("make", SUBNORMAL_REGULARIZED.values(), ids=SUBNORMAL_REGULARIZED.keys())
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_regularized_family_survives_subnormal_constants(make, jit):
    """As adagrad does (test_core_defects.py): subnormal constants are flushed to 0,
    so the denominators are 0 until a gradient arrives, and only the zero guard keeps
    0 / 0 from giving NaN.

    From w = 0: a zero gradient leaves w where it is (update exactly 0: the
    documented fallback of each rule). Then g = (0, 3): the zero coordinate still
    does not move, and the other takes one Adagrad step -lr * g / sqrt(g^2) =
    -0.1 (proximal: a = 0.1 / 3; RDA: -lr z / h = -0.1 * 3 / 3; FTRL: -z / q =
    -3 / (3 / 0.1)); the tiny l1, l2 = 1e-3 move it by less than 1e-3 * 0.1.
    """
    tx = make()
    update = jax.jit(tx.update) if jit else tx.update
    w = jnp.zeros(2)
    state = tx.init(w)
    u, state = update(jnp.zeros(2), state, w)
    np.testing.assert_array_equal(u, [0.0, 0.0])
    u, state = update(jnp.array([0.0, 3.0]), state, w)
    assert bool(jnp.all(jnp.isfinite(u)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
    assert float(u[0]) == 0.0
    np.testing.assert_allclose(u[1], -0.1, rtol=2e-3)


# --- 3. one block layout -----------------------------------------------------------


@pytest.mark.parametrize(
    "shape, block_size, flatten, grid",
    [
        ((5, 3), 2, True, (8,)),  # 15 coordinates in blocks of 2: ceil(15 / 2) = 8
        ((), 4, True, (1,)),  # a scalar is one block of 1
        ((5, 1, 3), 2, False, (3, 2)),  # unit dimension dropped: ceil(5/2) x ceil(3/2)
    ],
)
def test_blocks_round_trip(shape, block_size, flatten, grid):
    """to_blocks pads the edges with zeros and from_blocks cuts them off: x back, exactly."""
    lay = blocks.layout(shape, block_size, flatten=flatten)
    assert lay is not None and lay.grid == grid
    x = jnp.arange(1, 1 + int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
    xb = blocks.to_blocks(x, lay, jnp.float32)
    assert xb.shape == (lay.num_blocks, *lay.blocks)
    assert float(jnp.sum(xb)) == float(jnp.sum(x))  # padding is zeros
    np.testing.assert_array_equal(blocks.from_blocks(xb, lay, shape), x)


def test_shampoo_leaves_with_one_dimension_are_diagonal():
    assert blocks.layout((1, 7), 4, flatten=False) is None
    assert blocks.layout((7,), 4, flatten=True) == blocks.Layout((7,), (4,))


# --- 4. dense-only optimizers given a RowSparse ---------------------------------------

DENSE_ONLY = {
    "shampoo": lambda: adagrad_jax.shampoo(0.1),
    "scale_by_shampoo": lambda: adagrad_jax.scale_by_shampoo(),
    "full_matrix_adagrad": lambda: adagrad_jax.full_matrix_adagrad(0.1),
    "scale_by_full_matrix_adagrad": lambda: adagrad_jax.scale_by_full_matrix_adagrad(),
    "adagrad_norm": lambda: adagrad_jax.adagrad_norm(0.1),
    "adagrad_norm(per_leaf=False)": lambda: adagrad_jax.adagrad_norm(0.1, per_leaf=False),
    "scale_by_adagrad_norm": lambda: adagrad_jax.scale_by_adagrad_norm(),
}


@pytest.mark.parametrize("name, make", DENSE_ONLY.items(), ids=DENSE_ONLY.keys())
@pytest.mark.parametrize("with_params", [True, False], ids=["params", "no-params"])
def test_dense_only_optimizers_name_the_row_sparse_and_the_fix(name, make, with_params):
    fn = name.split("(")[0]
    tx = make()
    params = {"t": jnp.zeros((4, 3)), "w": jnp.zeros(2)}
    grads = {"t": adagrad_jax.RowSparse(jnp.array([0, 2]), jnp.ones((2, 3))), "w": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(TypeError) as info:
        tx.update(grads, state, params if with_params else None)
    message = str(info.value)
    assert message.startswith(f"{fn}: updates['t'] is a RowSparse")
    assert f"{fn} takes dense gradients only" in message
    assert "optax.multi_transform" in message and "adagrad_jax.adagrad(...)" in message


def test_the_suggested_multi_transform_trains_the_table_beside_shampoo():
    """The fix the message gives works: table rows get adagrad's first step,
    -lr * g / |g| = -0.1 on rows 0 and 2 only; the dense leaf gets shampoo's."""
    tx = optax.multi_transform(
        {"dense": adagrad_jax.shampoo(0.1), "table": adagrad_jax.adagrad(0.1)},
        {"t": "table", "w": "dense"},
    )
    params = {"t": jnp.zeros((4, 3)), "w": jnp.zeros((2, 2))}
    grads = {"t": adagrad_jax.RowSparse(jnp.array([0, 2]), jnp.ones((2, 3))), "w": jnp.ones((2, 2))}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = adagrad_jax.apply_updates(params, updates)
    np.testing.assert_allclose(new["t"][jnp.array([0, 2])], -0.1, rtol=1e-6)
    np.testing.assert_array_equal(new["t"][jnp.array([1, 3])], 0.0)
    np.testing.assert_allclose(new["w"], -0.1, rtol=1e-6)  # diagonal Adagrad before step 10


# --- 5. coupled weight decay without params --------------------------------------------

WEIGHT_DECAY = {
    "adagrad": lambda: adagrad_jax.adagrad(0.1, weight_decay=0.1),
    "sparse_adagrad": lambda: adagrad_jax.sparse_adagrad(0.1, weight_decay=0.1),
    "torch_adagrad": lambda: compat.torch_adagrad(0.1, weight_decay=0.1),
    "keras_adagrad": lambda: compat.keras_adagrad(0.1, weight_decay=0.1),
}


@pytest.mark.parametrize("fn, make", WEIGHT_DECAY.items(), ids=WEIGHT_DECAY.keys())
def test_weight_decay_without_params_names_the_function(fn, make):
    tx = make()
    state = tx.init({"w": jnp.ones(2)})
    expected = f"{fn}(weight_decay=0.1): update(updates, state, params) needs params"
    with pytest.raises(ValueError, match=re.escape(expected)):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match=re.escape(expected)):
        jax.jit(tx.update)({"w": jnp.ones(2)}, state)


# --- one dtype check --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, tx",
    [
        ("adagrad", adagrad_jax.adagrad(0.1)),
        ("adagrad_norm", adagrad_jax.adagrad_norm(0.1)),
        ("torch_adagrad", compat.torch_adagrad(0.1)),
    ],
)
def test_integer_gradients_get_one_message(fn, tx):
    """trees.check_inexact is the only inexact-dtype check: the same words everywhere."""
    params = {"a": jnp.zeros(2)}
    with pytest.raises(TypeError) as info:
        tx.update({"a": jnp.ones(2, jnp.int32)}, tx.init(params), params)
    assert str(info.value) == (
        f"{fn}: updates['a'] has dtype int32; Adagrad needs floating or complex leaves (an"
        " integer step would be truncated). Cast the leaf to a floating dtype, or exclude it"
        " with optax.masked."
    )
