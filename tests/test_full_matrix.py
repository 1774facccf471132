"""full_matrix_adagrad: hand computations, the paper's rule, block_size=1 = adagrad, rotations."""

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

SHAPES = {"w": (3, 4), "b": (7,), "s": ()}


def make(shapes=SHAPES, dtype=jnp.float32, steps=4, seed=0):
    return random_problem(shapes, dtype, steps, seed)


def reference(params, grads, *, lr, block_size, tau=0.0, **hyper):
    names = sorted(params)
    ws = [np.asarray(params[k], np.float64) for k in names]
    gs = [[np.asarray(g[k], np.float64) for k in names] for g in grads]
    init = functools.partial(ref.full_matrix_init, block_size=block_size, tau=tau)
    out, _ = ref.run(init, ref.full_matrix_step, ws, gs, lr=lr, **hyper)
    return dict(zip(names, out))


# --- numbers ------------------------------------------------------------------

def test_hand_computed_steps():
    """g1 = (3, 4): G = g g^T has the one eigenvalue 25 along g/5, so P g = g / 5 = g/|g|.
    g2 = (4, -3) is orthogonal: G = 25 I, P g = g / 5. With tau = 1: G = I + g g^T,
    eigenvalue 26 along g, so u = g / sqrt(26)."""
    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2, eps=0.0)
    state = tx.init(jnp.zeros(2))
    u, state = tx.update(jnp.array([3.0, 4.0]), state)
    np.testing.assert_allclose(u, [0.6, 0.8], rtol=1e-6)
    u, state = tx.update(jnp.array([4.0, -3.0]), state)
    np.testing.assert_allclose(u, [0.8, -0.6], rtol=1e-6)
    np.testing.assert_allclose(state.statistics[0], 25 * np.eye(2), atol=1e-5)
    np.testing.assert_allclose(state.preconditioners[0], np.eye(2) / 5, atol=1e-7)

    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2, eps=0.0,
                                                  initial_accumulator_value=1.0)
    u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, np.array([3.0, 4.0]) / np.sqrt(26), rtol=1e-6)


def test_eps_outside_and_eps_root_inside_the_root():
    """Hand: one coordinate, g = 3, tau = 0: u = 3 / (sqrt(9 + eps_root) + eps)."""
    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=4, eps=1.0, eps_root=7.0)
    u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(u, [3.0 / (4.0 + 1.0)], rtol=1e-6)


@pytest.mark.parametrize("hyper, float64", [
    (dict(lr=0.05, block_size=5, tau=0.1, eps=1e-2, eps_root=0.3), True),  # last block padded
    (dict(lr=0.1, block_size=3, tau=0.5, eps=0.0, every=2), True),
    (dict(lr=0.1, block_size=64, tau=0.2, eps=1e-4), False),  # one block per leaf
], ids=["padded-blocks", "every-2", "one-block"])
def test_matches_reference(hyper, float64):
    """Source: Duchi et al. 2011 Fig. 2 per block (tests/reference_beyond.py). In float64
    the agreement is to rounding."""
    kw = dict(learning_rate=hyper["lr"], block_size=hyper["block_size"],
              initial_accumulator_value=hyper["tau"], eps=hyper["eps"],
              eps_root=hyper.get("eps_root", 0.0),
              preconditioner_every=hyper.get("every", 1))
    rest = {k: v for k, v in hyper.items() if k in ("eps", "eps_root", "every")}
    params, grads = make(steps=5)
    expected = reference(params, grads, lr=hyper["lr"], block_size=hyper["block_size"],
                         tau=hyper["tau"], **rest)
    got, _ = run(adagrad_jax.full_matrix_adagrad(**kw), params, grads)
    close(got, expected, rtol=2e-5, atol=1e-6)
    if not float64:
        return
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        grads64 = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), g) for g in grads]
        got, state = run(adagrad_jax.full_matrix_adagrad(**kw), params64, grads64)
        assert all(s.dtype == jnp.float64 for s in jax.tree.leaves(state[0]) if s.ndim)
        close(got, expected, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("hyper", [
    {}, dict(initial_accumulator_value=0.1, eps=1e-3, eps_root=0.2)], ids=["defaults", "all"])
def test_block_size_one_is_diagonal_adagrad(hyper):
    """A 1 x 1 block: P = 1 / (sqrt(G + eps_root) + eps), adagrad's rule with the same
    tau, eps (outside) and eps_root (inside); equal to rounding of g * (1/d) vs g / d."""
    params, grads = make(steps=6)
    grads[2]["b"] = jnp.zeros(7)  # a zero gradient mid-run
    diag, _ = run(adagrad_jax.adagrad(0.1, **hyper), params, grads)
    full, _ = run(adagrad_jax.full_matrix_adagrad(0.1, block_size=1, **hyper), params, grads)
    close(full, jax.tree.map(lambda x: np.asarray(x, np.float64), diag), rtol=1e-6, atol=1e-7)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        g64 = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), g) for g in grads]
        diag, _ = run(adagrad_jax.adagrad(0.1, **hyper), p64, g64)
        full, _ = run(adagrad_jax.full_matrix_adagrad(0.1, block_size=1, **hyper), p64, g64)
        close(full, jax.tree.map(np.asarray, diag), rtol=1e-15, atol=1e-16)


def test_rotation_invariance_with_one_block():
    """On f(x) = x^T A x / 2 and its rotation f(R x), full-matrix iterates satisfy
    x'_t = R^T x_t (g' = R^T g, G' = R^T G R, P' = R^T P R); diagonal Adagrad's do not."""
    rng = np.random.default_rng(3)
    d = 6
    a = np.diag(np.logspace(0, 3, d))
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x0 = rng.normal(size=d)
    with jax.enable_x64(True):
        def iterates(tx, hess, start):
            x = jnp.asarray(start)
            state = tx.init(x)
            update = jax.jit(tx.update)
            out = []
            for _ in range(20):
                u, state = update(jnp.asarray(hess) @ x, state)
                x = x + u
                out.append(np.asarray(x))
            return np.array(out)

        def gap(tx):
            xs = iterates(tx, a, x0)
            ys = iterates(tx, r.T @ a @ r, r.T @ x0)
            return np.max(np.abs(ys - xs @ r))  # rows: y_t = R^T x_t

        assert gap(adagrad_jax.full_matrix_adagrad(0.1, block_size=d, eps=0.0,
                                                   initial_accumulator_value=1e-3)) < 1e-7
        assert gap(adagrad_jax.adagrad(0.1, eps=0.0, initial_accumulator_value=1e-3)) > 1e-2


# --- zeros, singular statistics, stale preconditioners ------------------------

def test_zero_gradient_and_singular_statistic_give_no_nan():
    tx = adagrad_jax.full_matrix_adagrad(0.1, block_size=4, eps=0.0)
    params = {"w": jnp.ones((2, 4))}
    state = tx.init(params)
    u, state = jax.jit(tx.update)({"w": jnp.zeros((2, 4))}, state)
    assert bool(jnp.all(u["w"] == 0))
    # Rank-1 statistic, tau = eps = 0: singular, yet finite and equal to g / |g|.
    g = jnp.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    u, state = jax.jit(tx.update)({"w": g}, state)
    leaves = jax.tree.leaves((u, state))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    np.testing.assert_allclose(u["w"][0], -0.1 * np.array([1, 2, 0, 0]) / np.sqrt(5), rtol=1e-5)
    assert bool(jnp.all(u["w"][1] == 0))


def test_stale_preconditioner_gives_no_step_outside_its_range():
    """Refreshed at t = 1 from g1 = e1 only: at t = 2 the new direction e2 gets 0."""
    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2, eps=1e-8,
                                                  preconditioner_every=2)
    state = tx.init(jnp.zeros(2))
    u, state = tx.update(jnp.array([2.0, 0.0]), state)
    np.testing.assert_allclose(u, [1.0, 0.0], rtol=1e-6)
    u, state = tx.update(jnp.array([1.0, 3.0]), state)  # P = diag(1/2, 0), from t = 1
    np.testing.assert_allclose(u, [0.5, 0.0], rtol=1e-6)
    # Refreshed at t = 3: G = [[4, 0], [0, 0]] + [[1, 3], [3, 9]] + [[0, 0], [0, 16]]
    # = [[5, 3], [3, 25]], whose inverse root the float64 eigendecomposition gives.
    u, state = tx.update(jnp.array([0.0, 4.0]), state)
    lam, q = np.linalg.eigh(np.array([[5.0, 3.0], [3.0, 25.0]]))
    expected = (q / (np.sqrt(lam) + 1e-8)) @ q.T @ np.array([0.0, 4.0])
    np.testing.assert_allclose(u, expected, rtol=1e-5)


def test_non_finite_statistic_keeps_the_last_preconditioner():
    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2)
    state = tx.init(jnp.zeros(2))
    _, state = tx.update(jnp.array([1.0, 1.0]), state)
    before = state.preconditioners
    _, state = tx.update(jnp.array([jnp.inf, 1.0]), state)
    np.testing.assert_array_equal(state.preconditioners, before)


def test_refresh_runs_under_lax_cond_only_when_due():
    """Ordinary steps skip the eigendecompositions: the eigh sits inside a cond."""
    params = {"w": jnp.ones((8,))}
    tx = adagrad_jax.full_matrix_adagrad(0.1, block_size=8, preconditioner_every=5)
    state = tx.init(params)
    outside, inside = primitives_outside_and_inside_cond(
        jax.make_jaxpr(tx.update)(params, state).jaxpr)
    assert "eigh" in inside and "eigh" not in outside
    every = adagrad_jax.full_matrix_adagrad(0.1, block_size=8)
    outside, inside = primitives_outside_and_inside_cond(
        jax.make_jaxpr(every.update)(params, every.init(params)).jaxpr)
    assert "eigh" in outside and not inside


def primitives_outside_and_inside_cond(jaxpr):
    """Names of the primitives a jaxpr runs unconditionally, and inside lax.cond branches."""
    outside, inside = set(), set()

    def walk(jaxpr, in_cond):
        for eqn in jaxpr.eqns:
            (inside if in_cond else outside).add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub, in_cond or eqn.primitive.name == "cond")

    walk(jaxpr, False)
    return outside, inside


# --- dtypes, state, composition -----------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_statistics_are_float32(dtype):
    params, grads = make(dtype=dtype, steps=3)
    tx = adagrad_jax.full_matrix_adagrad(0.1, block_size=4)
    state0 = tx.init(params)
    state = state0
    for g in grads:
        u, state = jax.jit(tx.update)(g, state)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, g)
        assert jax.tree.structure(state) == jax.tree.structure(state0)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    assert {x.dtype for x in jax.tree.leaves(state[0].statistics)} == {jnp.dtype(jnp.float32)}


def test_init_on_shape_dtype_structs_and_inject_hyperparams():
    params, grads = make({"w": (3, 4)}, steps=3)
    tx = adagrad_jax.full_matrix_adagrad(0.1, block_size=4)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(abstract)) == jax.tree.map(
        lambda x: (x.shape, x.dtype), tx.init(params))
    injected = optax.inject_hyperparams(adagrad_jax.full_matrix_adagrad)(
        learning_rate=0.1, block_size=4, preconditioner_every=2)
    plain = adagrad_jax.full_matrix_adagrad(0.1, block_size=4, preconditioner_every=2)
    a, _ = run(injected, params, grads)
    b, _ = run(plain, params, grads)
    close(a, jax.tree.map(np.asarray, b), rtol=1e-6)
    # block_size fixes shapes: a traced one (jit(init)) must be named as static.
    with pytest.raises(TypeError, match=r"block_size.*static_args=\('block_size',\)"):
        jax.jit(injected.init)(params)
    static = optax.inject_hyperparams(adagrad_jax.full_matrix_adagrad, static_args="block_size")
    jax.jit(static(learning_rate=0.1, block_size=4).init)(params)


def test_multi_steps_and_none_leaves():
    params = {"w": jnp.ones((2, 3)), "frozen": None}
    tx = optax.MultiSteps(adagrad_jax.full_matrix_adagrad(0.1, block_size=3), 2)
    state = tx.init(params)
    g = {"w": jnp.full((2, 3), 0.5), "frozen": None}
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps is not strict-clean
        u, state = jax.jit(tx.update)(g, state, params)
        u, state = jax.jit(tx.update)(g, state, params)
    assert u["frozen"] is None
    # The mean gradient, 0.5 everywhere; each row is a block of 3: P g = g / |g|.
    np.testing.assert_allclose(u["w"], -0.1 * np.full((2, 3), 1 / np.sqrt(3)), rtol=1e-5)


# --- errors -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(block_size=0), ValueError,
     r"full_matrix_adagrad\(block_size=0\): block_size must be in \[1"),
    (dict(block_size=2.0), TypeError, r"block_size=2.0\): block_size must be an integer"),
    (dict(block_size=True), TypeError, "block_size must be an integer"),
    (dict(preconditioner_every=0), ValueError, "preconditioner_every must be in"),
    (dict(eps=-1.0), ValueError, r"full_matrix_adagrad\(eps=-1.0\): eps must be finite and >= 0"),
    (dict(eps_root=float("nan")), ValueError, "eps_root must be finite"),
    (dict(initial_accumulator_value=-0.1), ValueError, "initial_accumulator_value must be"),
    (dict(learning_rate="fast"), TypeError, "learning_rate must be a number or an optax schedule"),
    (dict(blocksize=4), TypeError, "Did you mean 'block_size'"),
])
def test_bad_arguments_name_function_argument_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        adagrad_jax.full_matrix_adagrad(**kwargs)


def test_bad_arguments_under_default_promotion_rules():
    with (jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"),
          pytest.raises(ValueError, match="block_size")):
        adagrad_jax.scale_by_full_matrix_adagrad(block_size=-3)


def test_complex_and_integer_parameters_are_refused_at_init():
    tx = adagrad_jax.full_matrix_adagrad()
    with pytest.raises(TypeError, match=r"full_matrix_adagrad: parameter \['z'\].*complex64"):
        tx.init({"z": jnp.zeros(3, jnp.complex64)})
    with pytest.raises(TypeError, match=r"\['i'\] has dtype int32"):
        tx.init({"i": jnp.zeros(3, jnp.int32)})


def test_statistics_that_do_not_fit_the_gradient_are_refused():
    tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2)
    state = tx.init({"w": jnp.zeros(4)})
    bad = state._replace(statistics={"w": jnp.zeros((2, 2, 3))})
    with pytest.raises(ValueError, match=r"statistics\['w'\] has shape \(2, 2, 3\).*square"):
        tx.update({"w": jnp.ones(4)}, bad)
    with pytest.raises(ValueError, match=r"not a stack of square"):
        tx.update({"w": jnp.ones(6)}, state)
