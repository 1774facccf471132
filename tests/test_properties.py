"""Hypothesis property runs over random trees, dtypes, hyperparameters and gradients (issue 11).

Properties, for every example:
- no NaN in an update or in the state unless a gradient had a NaN or inf (inf / inf
  is NaN by the formula), and none at all under a skip policy;
- state dtypes, shapes and tree structure never change across steps; updates come
  back in the gradient's dtype and shape;
- row-sparse training equals dense training on the same gradients.

Speed: the steps run eagerly on small arrays from a fixed set of shapes, so JAX's
per-operation caches are warm after the first few examples and no example
compiles a whole program. Runs are derandomized (a fixed sequence of examples),
with no example database, so CI sees the same examples every time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adagrad_jax
from adagrad_jax import RowSparse

SETTINGS = settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

SHAPES = [(), (3,), (2, 3)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64]
# Hyperparameters from 0 through subnormal and tiny to huge (finite in float32).
SIZES = [0.0, 1e-40, 1e-30, 1e-8, 0.1, 1.0, 1e10, 1e30]
RATES = [0.0, 1e-30, 1e-3, 0.1, 1.0, 10.0]


def _values(dtype, shape, *, nan: bool):
    """Gradient entries: zeros, tiny, ordinary and huge (finite in `dtype`)."""
    real = (
        jnp.finfo(jnp.dtype(dtype)).dtype
        if jnp.issubdtype(dtype, jnp.complexfloating)
        else jnp.dtype(dtype)
    )
    big = float(jnp.finfo(real).max)
    pool = [0.0, 0.0, -0.0, 1e-30, -1e-7, 0.5, -2.0, 300.0, big / 2, -big]
    if nan:
        pool += [float("nan"), float("inf"), -float("inf")]
    size = int(np.prod(shape))
    return st.lists(st.sampled_from(pool), min_size=size, max_size=size).map(
        lambda xs: np.asarray(xs, np.float64).reshape(shape)
    )


@st.composite
def dense_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    names = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    shapes = {n: draw(st.sampled_from(SHAPES)) for n in names}
    nan = draw(st.booleans()) and draw(st.booleans())  # a quarter of the examples
    steps = []
    for _ in range(2):
        grads = {}
        for n, shape in shapes.items():
            x = draw(_values(dtype, shape, nan=nan))
            if jnp.issubdtype(dtype, jnp.complexfloating):
                z = np.empty(shape, np.complex128)
                z.real, z.imag = x, draw(_values(dtype, shape, nan=nan))
                x = z
            with np.errstate(over="ignore", invalid="ignore"):
                grads[n] = jnp.asarray(x, dtype)
        steps.append(grads)
    params = {
        n: jnp.asarray(np.linspace(-1, 1, int(np.prod(s))).reshape(s), dtype)
        for n, s in shapes.items()
    }
    hyper = dict(
        learning_rate=draw(st.sampled_from(RATES)),
        initial_accumulator_value=draw(st.sampled_from(SIZES)),
        eps=draw(st.sampled_from(SIZES)),
        eps_root=draw(st.sampled_from(SIZES)),
        nonfinite=draw(st.sampled_from(["propagate", "skip_coordinate", "skip_step"])),
    )
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        hyper["weight_decay"] = draw(st.sampled_from([None, 0.0, 1e-4, 0.5]))
    return params, steps, hyper


def _has_nan(tree) -> bool:
    return any(bool(jnp.any(jnp.isnan(x))) for x in jax.tree.leaves(tree))


def _specs(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@SETTINGS
@given(dense_problem())
def test_dense_steps_never_make_nan_and_keep_state_types(problem):
    params, steps, hyper = problem
    tx = adagrad_jax.adagrad(**hyper)
    state = tx.init(params)
    start = _specs(state)
    input_nan = not all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(steps))
    for grads in steps:
        updates, state = tx.update(grads, state, params)
        assert _specs(state) == start
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
            assert u.shape == g.shape and u.dtype == g.dtype
        if not input_nan or hyper["nonfinite"] != "propagate":
            assert not _has_nan((updates, state)), (hyper, grads, updates)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


NUM_ROWS, DIM, K = 6, 2, 5


@st.composite
def row_problem(draw):
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
    row_wise = draw(st.booleans())
    steps = []
    for _ in range(2):
        ids = np.asarray(
            draw(st.lists(st.integers(-1, NUM_ROWS + 1), min_size=K, max_size=K)), np.int32
        )
        values = draw(_values(dtype, (K, DIM), nan=False))
        values = np.clip(values, -1e3, 1e3)  # sums of duplicates stay finite in bfloat16
        steps.append((ids, values))
    hyper = dict(
        learning_rate=draw(st.sampled_from(RATES)),
        initial_accumulator_value=draw(st.sampled_from(SIZES)),
        eps=draw(st.sampled_from(SIZES)),
        eps_root=draw(st.sampled_from(SIZES)),
        row_wise=row_wise,
    )
    return dtype, steps, hyper


@functools.cache
def _row_optimizer(row_wise: bool):
    """One injected adagrad per `row_wise`, its update jitted once per gradient kind and
    dtype: each example sets the hyperparameters in the state, so nothing recompiles."""
    tx = optax.inject_hyperparams(adagrad_jax.adagrad, static_args=("row_wise",))(
        learning_rate=0.1, initial_accumulator_value=0.0, eps=0.0, eps_root=0.0, row_wise=row_wise
    )
    return tx, jax.jit(tx.update), jax.jit(adagrad_jax.apply_updates)


@SETTINGS
@given(row_problem())
def test_row_sparse_equals_dense(problem):
    """Source: ARCHITECTURE.md, rule 4: for plain Adagrad a zero gradient row changes
    nothing, so the row path (dedup, gather, rule, scatter) gives the dense result.
    The dense gradient sums duplicates as the row path does (float32, rounded once
    to the gradient's dtype). State entries below float32's smallest normal number
    count as 0 (XLA flushes them)."""
    dtype, steps, hyper = problem
    params = jnp.asarray(np.linspace(-1, 1, NUM_ROWS * DIM).reshape(NUM_ROWS, DIM), dtype)
    tx, update, apply = _row_optimizer(hyper.pop("row_wise"))
    state = tx.init(params)
    hyperparams = {
        k: jnp.asarray(hyper[k], v.dtype) if k in hyper else v
        for k, v in state.hyperparams.items()
    }
    state = state._replace(hyperparams=hyperparams)
    sparse_p, sparse_s = params, state
    dense_p, dense_s = params, state
    start = _specs(sparse_s)
    for ids, values in steps:
        # Duplicates summed as the row path sums them: the values in `dtype`, added in
        # float32 (the wider of the gradient's and the accumulator's dtypes) in id order.
        full = np.zeros((NUM_ROWS, DIM), np.float32)
        live = (ids >= 0) & (ids < NUM_ROWS)
        rounded = np.asarray(jnp.asarray(values, dtype), np.float32)
        np.add.at(full, ids[live], rounded[live])
        g_sparse = RowSparse(jnp.asarray(ids), jnp.asarray(values, dtype))
        u, sparse_s = update(g_sparse, sparse_s, sparse_p)
        sparse_p = apply(sparse_p, u)
        u, dense_s = update(jnp.asarray(full, dtype), dense_s, dense_p)
        dense_p = apply(dense_p, u)
        assert _specs(sparse_s) == start and _specs(dense_s) == start
        assert not _has_nan((sparse_p, sparse_s))
    rtol = 1e-5 if dtype == jnp.float32 else 2e-2
    tiny = float(jnp.finfo(jnp.float32).tiny)
    np.testing.assert_allclose(
        np.asarray(sparse_p, np.float32), np.asarray(dense_p, np.float32), rtol=rtol, atol=tiny
    )
    np.testing.assert_allclose(
        np.asarray(jax.tree.leaves(sparse_s.inner_state)[0]),
        np.asarray(jax.tree.leaves(dense_s.inner_state)[0]),
        rtol=rtol,
        atol=tiny,
    )
