"""shampoo: hand computations, Gupta et al.'s rule (blocked, any rank, grafted), cond refresh."""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from tests import reference_beyond as ref
from tests.problems import close, random_problem
from tests.problems import train as run

SHAPES = {"w": (5, 3), "t": (2, 1, 3, 4), "b": (3,), "s": ()}


def make(shapes=SHAPES, dtype=jnp.float32, steps=5, seed=0):
    return random_problem(shapes, dtype, steps, seed)


def reference(params, grads, *, block_size, **hyper):
    names = sorted(params)
    ws = [np.asarray(params[k], np.float64) for k in names]
    gs = [[np.asarray(g[k], np.float64) for k in names] for g in grads]
    init = functools.partial(ref.shampoo_init, block_size=block_size)
    out, _ = ref.run(init, ref.shampoo_step, ws, gs, block_size=block_size, **hyper)
    return dict(zip(names, out))


def raw(**kw):
    """Shampoo as in the paper: no graft, preconditioners from the first step, every step."""
    return adagrad_jax.scale_by_shampoo(graft=None, preconditioner_every=1,
                                        start_preconditioning_step=1, **kw)


# --- numbers ------------------------------------------------------------------

def test_hand_computed_rank_one_and_diagonal_gradients():
    """G = s a b^T (unit a, b): L = s^2 a a^T, R = s^2 b b^T, so with eps = 0
    L^(-1/4) G R^(-1/4) = a b^T = G / |G|_F. A diagonal G = diag(1, 2, 4): L = R =
    diag(1, 4, 16) and the direction is L^(-1/4) G R^(-1/4) = I."""
    tx = raw(eps=0.0)
    g = jnp.outer(jnp.array([1.0, 2.0]), jnp.array([3.0, 0.0, -4.0]))
    u, state = jax.jit(tx.update)(g, tx.init(jnp.zeros((2, 3))))
    np.testing.assert_allclose(u, g / np.linalg.norm(g), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.statistics[0][0], g @ g.T, rtol=1e-6)
    np.testing.assert_allclose(state.statistics[1][0], g.T @ g, rtol=1e-6)

    u, _ = jax.jit(tx.update)(jnp.diag(jnp.array([1.0, 2.0, 4.0])), tx.init(jnp.zeros((3, 3))))
    np.testing.assert_allclose(u, np.eye(3), atol=1e-6)


def test_hand_computed_graft_takes_diagonal_adagrads_norm():
    """First step, eps = 0: diagonal Adagrad's direction is sign(g), of norm sqrt(#nonzero);
    the rank-one direction a b^T has norm 1, so the grafted step is sqrt(4) * a b^T."""
    tx = adagrad_jax.scale_by_shampoo(eps=0.0, preconditioner_every=1,
                                      start_preconditioning_step=1)
    g = jnp.outer(jnp.array([1.0, 2.0]), jnp.array([3.0, -4.0]))
    u, _ = jax.jit(tx.update)(g, tx.init(jnp.zeros((2, 2))))
    np.testing.assert_allclose(u, 2 * g / np.linalg.norm(g), rtol=1e-5)
    sgd = adagrad_jax.scale_by_shampoo(eps=0.0, preconditioner_every=1,
                                       start_preconditioning_step=1, graft="sgd")
    u, _ = jax.jit(sgd.update)(g, sgd.init(jnp.zeros((2, 2))))
    np.testing.assert_allclose(u, g, rtol=1e-5)


def test_third_order_tensor_uses_sixth_roots():
    """A rank-one 3-tensor s a o b o c: each H_i = s^2 x x^T, and the direction
    G x_1 H_1^(-1/6) x_2 H_2^(-1/6) x_3 H_3^(-1/6) = s^(1 - 3/3) a o b o c = G / s."""
    a, b, c = np.array([1.0, 2.0]), np.array([0.0, 3.0, 4.0]), np.array([2.0, 1.0])
    g = np.einsum("i,j,k->ijk", a, b, c)
    tx = raw(eps=0.0)
    u, state = jax.jit(tx.update)(jnp.asarray(g, jnp.float32), tx.init(jnp.zeros((2, 3, 2))))
    assert len(state.statistics) == 3
    np.testing.assert_allclose(u, g / np.linalg.norm(g), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hyper, float64", [
    (dict(block_size=16, eps=1e-3, every=1, start=1, graft=None), False),
    (dict(block_size=2, eps=1e-4, every=2, start=3, graft="adagrad"), True),  # blocked, padded
    (dict(block_size=3, eps=1e-2, every=1, start=2, graft="sgd"), False),
], ids=["paper", "blocked-graft-adagrad", "graft-sgd"])
def test_matches_reference(hyper, float64):
    """Source: Gupta et al. 2018, Algorithm 2 per block, grafted (tests/reference_beyond.py).
    In float64 the agreement is to rounding."""
    kw = dict(learning_rate=0.1, block_size=hyper["block_size"], eps=hyper["eps"],
              preconditioner_every=hyper["every"],
              start_preconditioning_step=hyper["start"], graft=hyper["graft"])
    params, grads = make()
    expected = reference(params, grads, lr=0.1, **hyper)
    got, state = run(adagrad_jax.shampoo(**kw), params, grads)
    close(got, expected, rtol=5e-5, atol=1e-6)
    if not float64:
        return
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        g64 = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), g) for g in grads]
        got, state = run(adagrad_jax.shampoo(**kw), p64, g64)
        close(got, expected, rtol=1e-10, atol=1e-12)
        assert {x.dtype for x in jax.tree.leaves(state[0].statistics)} == {
            jnp.dtype(jnp.float64)}


def test_blocks_and_fallbacks_in_the_state():
    """Dimensions of size 1 are dropped; vectors and scalars are diagonal; a 5 x 3 leaf
    with block_size 2 is a 3 x 2 grid of blocks (the edges zero-padded)."""
    params, _ = make()
    state = adagrad_jax.scale_by_shampoo(block_size=2).init(params)
    shapes = jax.tree.map(lambda x: x.shape, state.statistics)
    assert shapes["w"] == ((6, 2, 2), (6, 2, 2))
    assert shapes["t"] == ((4, 2, 2), (4, 2, 2), (4, 2, 2))  # (2, 3, 4): grid 1 x 2 x 2
    assert shapes["b"] == () and shapes["s"] == ()
    assert jax.tree.map(lambda x: x.shape, state.sum_of_squares) == {
        k: v.shape for k, v in params.items()}


def test_before_start_the_step_is_diagonal_adagrad():
    params, grads = make({"w": (5, 3), "b": (3,)}, steps=3)
    tx = adagrad_jax.shampoo(0.1, start_preconditioning_step=4, eps=0.0)
    got, state = run(tx, params, grads)
    diag, _ = run(adagrad_jax.adagrad(0.1, eps=0.0), params, grads)
    close(got, jax.tree.map(np.asarray, diag), rtol=1e-6, atol=1e-7)
    assert all(bool(jnp.all(p == 0)) for p in jax.tree.leaves(state[0].preconditioners))
    assert int(state[0].count) == 3


# --- zeros, singular and non-finite statistics --------------------------------

def test_zero_gradient_and_singular_statistics_give_no_nan():
    params, grads = make({"w": (5, 3), "t": (2, 1, 3, 4)}, steps=2)
    zero = jax.tree.map(jnp.zeros_like, grads[0])
    # Grafted: computes Shampoo's raw direction too, then rescales it (guarded).
    for tx in (adagrad_jax.scale_by_shampoo(eps=0.0, preconditioner_every=1,
                                            start_preconditioning_step=1),):
        state = tx.init(params)
        update = jax.jit(tx.update)
        u, state = update(zero, state)
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
        rank_one = {k: jnp.zeros_like(v).at[(0,) * v.ndim].set(3.0) for k, v in params.items()}
        u, state = update(rank_one, state)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state)))
        np.testing.assert_allclose(u["w"][0, 0], 1.0, rtol=1e-5)


def test_non_finite_statistic_keeps_the_last_preconditioner():
    tx = raw()
    state = tx.init(jnp.zeros((2, 2)))
    update = jax.jit(tx.update)
    _, state = update(jnp.eye(2), state)
    before = state.preconditioners
    _, state = update(jnp.array([[jnp.inf, 0.0], [0.0, 1.0]]), state)
    for a, b in zip(state.preconditioners, before):
        np.testing.assert_array_equal(a, b)


def test_preconditioners_are_computed_only_when_due():
    """The eigendecompositions run inside lax.cond, which ordinary steps skip."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    tx = adagrad_jax.shampoo(0.1, preconditioner_every=3, start_preconditioning_step=2)
    outside, inside = set(), set()

    def walk(jaxpr, in_cond):
        for eqn in jaxpr.eqns:
            (inside if in_cond else outside).add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub, in_cond or eqn.primitive.name == "cond")

    walk(jax.make_jaxpr(tx.update)(params, tx.init(params)).jaxpr, False)
    assert "eigh" in inside and "eigh" not in outside

    state = tx.init(params)
    update = jax.jit(tx.update)
    refreshed = []
    for t in range(1, 9):
        before = state[0].preconditioners["w"]
        _, state = update(params, state)
        refreshed.append(not np.array_equal(before[0], state[0].preconditioners["w"][0]))
    # Due at t >= 2 with (t - 2) % 3 == 0: t = 2, 5, 8.
    assert refreshed == [t in (2, 5, 8) for t in range(1, 9)]


# --- dtypes, state, composition -----------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_parameters_get_float32_statistics(dtype):
    params, grads = make({"w": (5, 3), "b": (3,)}, dtype=dtype, steps=3)
    tx = adagrad_jax.shampoo(0.1, block_size=2, preconditioner_every=1,
                             start_preconditioning_step=1)
    state0 = tx.init(params)
    state = state0
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, g)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    inner = state[0]
    assert {x.dtype for x in jax.tree.leaves((inner.statistics, inner.sum_of_squares))} == {
        jnp.dtype(jnp.float32)}
    # Close to the float32 run on the same (rounded) numbers.
    f32, _ = run(tx, *jax.tree.map(lambda x: x.astype(jnp.float32), (params, grads)))
    low, _ = run(tx, params, grads)
    for k in params:
        np.testing.assert_allclose(low[k].astype(jnp.float32), f32[k], rtol=2e-2, atol=2e-2)


def test_inject_hyperparams_and_shape_dtype_structs():
    params, grads = make({"w": (4, 3), "b": (3,)}, steps=4)
    kw = dict(learning_rate=0.1, eps=1e-6, preconditioner_every=2,
              start_preconditioning_step=2)
    injected = optax.inject_hyperparams(adagrad_jax.shampoo)(**kw)
    a, _ = run(injected, params, grads)
    b, _ = run(adagrad_jax.shampoo(**kw), params, grads)
    close(a, jax.tree.map(np.asarray, b), rtol=1e-6)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    tx = adagrad_jax.shampoo()
    assert jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(abstract)) == jax.tree.map(
        lambda x: (x.shape, x.dtype), tx.init(params))


# --- errors -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(block_size=0), ValueError, r"shampoo\(block_size=0\): block_size must be in \[1"),
    (dict(block_size=1.5), TypeError, "block_size must be an integer"),
    (dict(preconditioner_every=-1), ValueError, "preconditioner_every must be in"),
    (dict(start_preconditioning_step=0), ValueError, "start_preconditioning_step must be in"),
    (dict(eps=-1e-6), ValueError, r"shampoo\(eps=-1e-06\): eps must be finite and >= 0"),
    (dict(eps=float("inf")), ValueError, "eps must be finite"),
    (dict(graft="adagard"), ValueError, r"graft='adagard'.*Did you mean 'adagrad'"),
    (dict(graft=1), ValueError, "graft must be one of 'adagrad', 'sgd', None"),
    (dict(lr=0.1), TypeError, "Did you mean 'learning_rate'"),
])
def test_bad_arguments_name_function_argument_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        adagrad_jax.shampoo(**kwargs)


def test_complex_parameters_are_refused_at_init():
    with pytest.raises(TypeError, match=r"shampoo: parameter \['z'\] has dtype complex64"):
        adagrad_jax.shampoo().init({"z": jnp.zeros((2, 2), jnp.complex64)})


def test_statistics_that_do_not_fit_the_gradient_are_refused():
    tx = adagrad_jax.scale_by_shampoo(block_size=2)
    state = tx.init({"w": jnp.zeros((4, 4))})
    bad = state._replace(statistics={"w": (jnp.zeros((4, 2, 3)), jnp.zeros((4, 2, 2)))})
    with pytest.raises(ValueError, match=r"statistics\['w'\] holds \[\(4, 2, 3\), \(4, 2, 2\)\]"):
        tx.update({"w": jnp.ones((4, 4))}, bad)
