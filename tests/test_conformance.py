"""The conformance suite: what every optimizer in `specs.SPECS` must do.

ARCHITECTURE.md, rule 6 lists the contract; each test below checks one clause for
every spec. Numbers are compared against the NumPy references in
`tests/reference.py` (float64 transcriptions of the documented rules).
"""

from __future__ import annotations

import inspect

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from tests import specs as specs_lib

SPECS = specs_lib.SPECS
ids = [s.name for s in SPECS]
parametrize = pytest.mark.parametrize("spec", SPECS, ids=ids)
parametrize_descending = pytest.mark.parametrize(
    "spec", specs_lib.DESCENDING, ids=[s.name for s in specs_lib.DESCENDING]
)

NUM_STEPS = 5


def make_params(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w": (3, 4), "b": (4,), "deep": [(2,), (1, 1)]}

    def draw(shape):
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype)

    return {
        "w": draw(shapes["w"]),
        "b": draw(shapes["b"]),
        "deep": [draw(s) for s in shapes["deep"]],
    }


def make_grads(params, num_steps=NUM_STEPS, seed=1):
    """`num_steps` gradient trees like `params`, drawn from a fixed seed."""
    rng = np.random.default_rng(seed)

    def draw(p):
        x = rng.normal(size=p.shape)
        if jnp.iscomplexobj(p):
            x = x + 1j * rng.normal(size=p.shape)
        return jnp.asarray(x, p.dtype)

    return [jax.tree.map(draw, params) for _ in range(num_steps)]


def run_steps(tx, params, grads, state=None, jit=True):
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update) if jit else tx.update
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def reference_run(spec, params, grads):
    """Runs the spec's NumPy reference; returns (params, accumulators or None)."""
    leaves, treedef = jax.tree.flatten(params)
    ws = [np.asarray(p, np.complex128 if np.iscomplexobj(p) else np.float64) for p in leaves]
    ref = spec.reference
    state = ref.init(ws)
    for t, g in enumerate(grads, start=1):
        gs = [np.asarray(x).astype(w.dtype) for x, w in zip(jax.tree.leaves(g), ws)]
        ws, state = ref.step(ws, gs, state, t)
    accs = None if ref.accumulators is None else ref.accumulators(state)
    return jax.tree.unflatten(treedef, ws), accs


def assert_trees_close(actual, expected, rtol, atol=0.0):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(
            np.asarray(a).astype(np.asarray(e).dtype), e, rtol=rtol, atol=atol
        ),
        actual,
        expected,
    )


def assert_close_to_reference(spec, actual, expected, start, rtol, atol=0.0):
    """`actual` against `expected` (trees): to float rounding, or for a spec with an
    8-bit accumulator (`quantized_state`) to the code's precision: within 15% of
    the leaf's largest distance travelled from `start` (each step's size is within
    ~10%; a coordinate that went back and forth travelled more than it moved)."""
    if not spec.quantized_state:
        assert_trees_close(actual, expected, rtol=rtol, atol=atol)
        return
    for a, e, s0 in zip(*(jax.tree.leaves(t) for t in (actual, expected, start))):
        a, e, s0 = (np.asarray(x, np.float64) for x in (a, e, s0))
        travelled = np.max(np.abs(e - s0), initial=0.0)
        assert np.all(np.abs(a - e) <= 0.15 * travelled + 1e-6 + atol), (a, e)


def assert_same_types(a, b):
    """Same tree structure, shapes and dtypes (what jit and lax.cond require)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)


# --- numbers ------------------------------------------------------------------


@parametrize
def test_matches_numpy_reference(spec):
    """Source: the documented formula of each spec, in tests/reference.py."""
    params = make_params()
    grads = make_grads(params)
    new_params, state = run_steps(spec.build(), params, grads)
    ref_params, ref_accs = reference_run(spec, params, grads)
    assert_close_to_reference(spec, new_params, ref_params, params, rtol=2e-6, atol=1e-7)
    if spec.accumulators is not None and ref_accs is not None:
        # 8 bits: within two code levels (at most 12.5% each) of the float64 sum.
        rtol = 0.2 if spec.quantized_state else 2e-6
        assert_trees_close(spec.accumulators(state), ref_accs, rtol=rtol)


@parametrize
def test_matches_numpy_reference_float64(spec):
    """In float64 the agreement is to rounding: the rule is the formula."""
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        grads = make_grads(params)
        new_params, _ = run_steps(spec.build(), params, grads)
        ref_params, _ = reference_run(spec, params, grads)
        assert_close_to_reference(spec, new_params, ref_params, params, rtol=1e-13, atol=1e-15)


@parametrize
def test_jit_equals_eager(spec):
    params = make_params()
    grads = make_grads(params)
    eager, _ = run_steps(spec.build(), params, grads, jit=False)
    jitted, _ = run_steps(spec.build(), params, grads, jit=True)
    assert_trees_close(jitted, eager, rtol=1e-6, atol=1e-7)


@parametrize
def test_no_retrace_on_second_call(spec):
    tx = spec.build()
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = make_params()
    state = tx.init(params)
    for g in make_grads(params, 3):
        params, state = step(params, state, g)
    assert len(traces) == 1


# --- state --------------------------------------------------------------------


def _dtype_cases():
    """(spec, dtype) pairs: complex only for specs whose rule covers it."""
    for spec in SPECS:
        for dtype in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.complex64):
            if jnp.issubdtype(dtype, jnp.complexfloating) and not spec.complex_params:
                continue
            yield pytest.param(spec, dtype, id=f"{spec.name}-{jnp.dtype(dtype).name}")


@pytest.mark.parametrize("spec, dtype", list(_dtype_cases()))
def test_dtypes_state_stable_and_updates_in_grad_dtype(spec, dtype):
    tx = spec.build()
    params = make_params(dtype)
    state0 = tx.init(params)
    state = state0
    for g in make_grads(params, 3):
        updates, state = jax.jit(tx.update)(g, state, params)
        assert_same_types(state, state0)
        if spec.float32_low_precision_updates and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            assert_same_types(updates, jax.tree.map(lambda x: x.astype(jnp.float32), g))
        else:
            assert_same_types(updates, g)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    if spec.accumulators is not None:
        assert all(a.dtype == jnp.float32 for a in spec.accumulators(state))


@parametrize
def test_float64_state_stays_float64(spec):
    with jax.enable_x64(True):
        tx = spec.build()
        params = make_params(jnp.float64)
        state0 = tx.init(params)
        _, state = run_steps(tx, params, make_grads(params, 2), state0)
        assert_same_types(state, state0)
        assert all(
            # floats stay float64; counters; 8-bit codes and their float32 block scales
            x.dtype in (jnp.float64, jnp.int32)
            or (spec.quantized_state and x.dtype in (jnp.uint8, jnp.float32))
            for x in jax.tree.leaves(state)
        )


@parametrize
def test_low_precision_close_to_reference(spec):
    """bfloat16 parameters, float32 accumulator: updates round to bfloat16 only."""
    params = make_params(jnp.bfloat16)
    grads = make_grads(params, 3)
    tx = spec.build()
    state = tx.init(params)
    updates = None
    for g in grads:
        updates, state = tx.update(g, state, params)
    # Reference with the bf16-rounded inputs, params held fixed (no apply).
    leaves, treedef = jax.tree.flatten(params)
    w0 = [np.asarray(p.astype(jnp.float32), np.float64) for p in leaves]
    ref_state = spec.reference.init(w0)
    for t, g in enumerate(grads, start=1):
        gs = [np.asarray(x.astype(jnp.float32), np.float64) for x in jax.tree.leaves(g)]
        w1, ref_state = spec.reference.step(w0, gs, ref_state, t)
    expected = jax.tree.unflatten(treedef, [a - b for a, b in zip(w1, w0)])
    if spec.quantized_state:
        zero = jax.tree.map(jnp.zeros_like, expected)
        assert_close_to_reference(spec, updates, expected, zero, rtol=1e-2, atol=1e-6)
        return
    if spec.rounds_weights:  # One bfloat16 spacing (2**-7 relative, or less) of w.
        for u, e, w in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), w0):
            spacing = 2.0**-7 * np.maximum(np.abs(w), np.abs(w + e)) + 1e-6
            assert np.all(np.abs(np.asarray(u, np.float64) - e) <= spacing), (u, e)
        return
    assert_trees_close(updates, expected, rtol=1e-2, atol=1e-6)


@parametrize
def test_state_is_stable_inside_lax_cond(spec):
    tx = spec.build()
    params = make_params()
    state = tx.init(params)
    grads = make_grads(params, 1)[0]

    @jax.jit
    def maybe_step(pred, params, state, grads):
        return jax.lax.cond(
            pred,
            lambda: tx.update(grads, state, params),
            lambda: (jax.tree.map(jnp.zeros_like, grads), state),
        )

    _, s_skip = maybe_step(False, params, state, grads)
    u_take, s_take = maybe_step(True, params, state, grads)
    assert_trees_close(s_skip, state, rtol=0)
    expected_u, expected_s = tx.update(grads, state, params)
    # Compiled and eager steps may round differently (fused multiply-adds);
    # updates formed as w_new - w (and FTRL's z) carry that as absolute error.
    assert_trees_close(u_take, expected_u, rtol=1e-6, atol=1e-6)
    assert_trees_close(s_take, expected_s, rtol=1e-6, atol=1e-6)


@parametrize
def test_init_on_shape_dtype_structs(spec):
    tx = spec.build()
    params = make_params()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    from_structs = tx.init(abstract)
    assert_same_types(from_structs, tx.init(params))
    assert_same_types(jax.eval_shape(tx.init, params), tx.init(params))


@parametrize
def test_init_keeps_sharding(spec):
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.ones((4, 2)), sharding)}
    leaves = jax.tree.leaves(spec.build().init(params))
    stacked = (spec.stacked_slots,) if spec.stacked_slots else ()
    like_params = [x for x in leaves if x.shape in ((4, 2), (4, 2, *stacked))]
    assert bool(like_params) == spec.param_shaped_state
    assert any(x.shape == (4, 2, *stacked) for x in like_params) == spec.param_shaped_state
    assert all(x.sharding.is_equivalent_to(sharding, x.ndim) for x in like_params)
    # Statistics of other shapes (counters, scalars, matrix blocks): on the same devices.
    assert all(x.sharding.device_set == sharding.device_set for x in leaves)


@parametrize
def test_checkpoint_round_trip_through_numpy(spec):
    """Save the state as NumPy arrays mid-run; resuming gives identical results."""
    tx = spec.build()
    params = make_params()
    grads = make_grads(params, 6)
    full_params, full_state = run_steps(tx, params, grads)

    mid_params, mid_state = run_steps(tx, params, grads[:3])
    buffer = io.BytesIO()
    leaves = jax.tree.leaves((mid_params, mid_state))
    np.savez(buffer, *[np.asarray(x) for x in leaves])
    buffer.seek(0)
    loaded = np.load(buffer)
    restored = [jnp.asarray(loaded[f"arr_{i}"]) for i in range(len(leaves))]
    treedef = jax.tree.structure((mid_params, mid_state))
    params2, state2 = jax.tree.unflatten(treedef, restored)
    resumed_params, resumed_state = run_steps(tx, params2, grads[3:], state2)
    assert_trees_close(resumed_params, full_params, rtol=0)
    assert_trees_close(resumed_state, full_state, rtol=0)


# --- composition --------------------------------------------------------------


@parametrize
def test_none_leaves(spec):
    tx = spec.build()
    params = {"a": jnp.ones(3), "frozen": None}
    state = tx.init(params)
    grads = {"a": jnp.full(3, 0.5), "frozen": None}
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert updates["frozen"] is None
    expected, _ = tx.update({"a": grads["a"]}, tx.init({"a": params["a"]}), {"a": params["a"]})
    np.testing.assert_allclose(updates["a"], expected["a"], rtol=1e-6)


@parametrize
def test_update_without_params_unless_weight_decay_is_set(spec):
    """optax allows update(g, state) for transforms that need no params: plain,
    and under inject_hyperparams (which turns every default into an array).
    A rule that needs them fails clearly, naming the missing argument."""
    params = make_params()
    if spec.needs_params:
        tx = spec.build()
        with pytest.raises(ValueError, match=r"params"):
            tx.update(make_grads(params, 1)[0], tx.init(params))
        return
    (g,) = make_grads(params, 1)
    hyper = (
        spec.hyperparams
        if not spec.uses_params
        else {k: v for k, v in spec.hyperparams.items() if k != "weight_decay"}
    )
    for tx in (spec.make(**hyper), optax.inject_hyperparams(spec.make)(**hyper)):
        u, _ = jax.jit(tx.update)(g, tx.init(params))
        with_params, _ = jax.jit(tx.update)(g, tx.init(params), params)
        assert_trees_close(u, with_params, rtol=0)


@parametrize
def test_inside_optax_chain_with_clipping(spec):
    params = make_params()
    grads = make_grads(params)
    chained, _ = run_steps(optax.chain(optax.clip(0.5), spec.build()), params, grads)
    clipped = [jax.tree.map(lambda g: jnp.clip(g, -0.5, 0.5), g) for g in grads]
    direct, _ = run_steps(spec.build(), params, clipped)
    assert_trees_close(chained, direct, rtol=1e-6, atol=1e-7)


@parametrize
def test_masked_and_multi_transform(spec):
    params = make_params()
    grads = make_grads(params)
    mask = {"w": True, "b": False, "deep": [True, False]}
    masked, _ = run_steps(optax.masked(spec.build(), mask), params, grads)
    sgd = optax.sgd(0.1)
    labels = {"w": "ada", "b": "sgd", "deep": ["ada", "sgd"]}
    multi, _ = run_steps(
        optax.multi_transform({"ada": spec.build(), "sgd": sgd}, labels), params, grads
    )
    # The selected leaves move as the optimizer alone moves that sub-tree (a rule may
    # couple the leaves it is given, as a per-model norm does).
    pick = lambda t: {"w": t["w"], "deep": [t["deep"][0]]}  # noqa: E731
    full, _ = run_steps(spec.build(), pick(params), [pick(g) for g in grads])
    sgd_only, _ = run_steps(sgd, params, grads)
    for tree in (masked, multi):
        np.testing.assert_allclose(tree["w"], full["w"], rtol=1e-6)
        np.testing.assert_allclose(tree["deep"][0], full["deep"][0], rtol=1e-6)
    # Masked-out leaves get the raw gradient as "update"; multi_transform's get SGD.
    np.testing.assert_allclose(multi["b"], sgd_only["b"], rtol=1e-6)
    np.testing.assert_allclose(masked["b"], params["b"] + sum(g["b"] for g in grads), rtol=1e-5)


@parametrize
def test_inject_hyperparams_same_numbers(spec):
    """Numeric hyperparameters become (traced) arrays and give the same numbers."""
    params = make_params()
    grads = make_grads(params)
    injected_tx = optax.inject_hyperparams(spec.make)(**spec.hyperparams)
    injected, state = run_steps(injected_tx, params, grads, jit=True)
    plain, _ = run_steps(spec.build(), params, grads)
    assert_trees_close(injected, plain, rtol=2e-6, atol=1e-7)
    numeric = {k for k, v in spec.hyperparams.items() if not isinstance(v, (bool, str))}
    assert numeric <= set(state.hyperparams)  # flags (stack_slots, ...) stay static


@parametrize
def test_multi_steps_accumulates_then_steps(spec):
    params = make_params()
    g1, g2 = make_grads(params, 2)
    tx = optax.MultiSteps(spec.build(), every_k_schedule=2)
    state = tx.init(params)
    # optax.MultiSteps divides by its int32 step count: not strict-clean (optax).
    with jax.numpy_dtype_promotion("standard"):
        u1, state = jax.jit(tx.update)(g1, state, params)
        u2, state = jax.jit(tx.update)(g2, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u1))
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = spec.build().update(mean, spec.build().init(params), params)
    assert_trees_close(u2, expected, rtol=1e-5, atol=1e-7)


# --- convergence --------------------------------------------------------------


def _minimise(tx, loss, x0, num_steps):
    @jax.jit
    def run(x):
        def body(carry, _):
            x, s = carry
            g = jax.grad(loss)(x)
            u, s = tx.update(g, s, x)
            return (optax.apply_updates(x, u), s), None

        (x, _), _ = jax.lax.scan(body, (x, tx.init(x)), None, length=num_steps)
        return x

    return run(x0)


@parametrize_descending
def test_converges_on_parabola(spec):
    """An ill-conditioned parabola with its minimum at c."""
    c = jnp.array([1.0, -2.0, 3.0])
    scales = jnp.array([1.0, 10.0, 100.0])
    loss = lambda x: jnp.sum(scales * (x - c) ** 2)
    x = _minimise(spec.build(**spec.converge), loss, jnp.zeros(3), 2000)
    np.testing.assert_allclose(x, c, atol=1e-3)


@parametrize_descending
def test_converges_on_rosenbrock(spec):
    """Rosenbrock's valley, from the classic start (-1.2, 1); minimum (1, 1)."""
    loss = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    x0 = jnp.array([-1.2, 1.0])
    x = _minimise(spec.build(**spec.converge), loss, x0, 20000)
    assert float(loss(x)) < 1e-4 < float(loss(x0))


# --- row-sparse gradients (specs with row_sparse) -----------------------------

ROW_SPARSE = [s for s in SPECS if s.row_sparse]
parametrize_row_sparse = pytest.mark.parametrize(
    "spec", ROW_SPARSE, ids=[s.name for s in ROW_SPARSE]
)
TABLES = {"t": (12, 3), "v": (10,)}


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in TABLES.items()
    }
    params["w"] = jnp.asarray(rng.normal(size=(2,)), jnp.float32)  # a dense leaf
    return params


def _row_grads(rows_per_table, num_steps=4, seed=3):
    """(row-sparse, dense) gradient pairs: each id of `rows_per_table[name]` once,
    plus a repeat of the first, in shuffled order."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(num_steps):
        sparse, dense = {}, {}
        for name, shape in TABLES.items():
            rows = np.asarray(rows_per_table[name])
            ids = rng.permutation(np.concatenate([rows, rows[:1]])).astype(np.int32)
            values = rng.normal(size=(ids.size,) + shape[1:]).astype(np.float32)
            full = np.zeros(shape, np.float32)
            np.add.at(full, ids, values)
            sparse[name] = adagrad_jax.RowSparse(jnp.asarray(ids), jnp.asarray(values))
            dense[name] = jnp.asarray(full)
        sparse["w"] = dense["w"] = jnp.asarray(rng.normal(size=(2,)), jnp.float32)
        pairs.append((sparse, dense))
    return pairs


def _train_rows(tx, params, grads, apply):
    update = jax.jit(tx.update)
    state = tx.init(params)
    for g in grads:
        updates, state = update(g, state, params)
        params = apply(params, updates)
    return params, state


@parametrize_row_sparse
def test_row_sparse_touching_every_row_equals_dense(spec):
    """Source: the spec's own dense rule. With every row touched at every step,
    the lazy table rule and the dense rule are the same computation."""
    params = _tables()
    pairs = _row_grads({name: np.arange(shape[0]) for name, shape in TABLES.items()})
    sparse, s_state = _train_rows(
        spec.build(), params, [p[0] for p in pairs], adagrad_jax.apply_updates
    )
    dense, d_state = _train_rows(spec.build(), params, [p[1] for p in pairs], optax.apply_updates)
    assert_trees_close(sparse, dense, rtol=1e-5, atol=1e-6)
    assert_trees_close(s_state, d_state, rtol=1e-5, atol=1e-6)


@parametrize_row_sparse
def test_row_sparse_untouched_rows_keep_their_values_and_state(spec):
    """Lazy semantics: rows no id touches keep parameters and state bit for bit;
    touched rows follow the dense rule on those rows alone."""
    touched = {"t": np.array([1, 4, 5, 9]), "v": np.array([0, 7])}
    params = _tables()
    pairs = _row_grads(touched)
    sparse, s_state = _train_rows(
        spec.build(), params, [p[0] for p in pairs], adagrad_jax.apply_updates
    )
    sub = {name: params[name][touched[name]] for name in TABLES} | {"w": params["w"]}
    sub_grads = [
        {name: d[name][touched[name]] for name in TABLES} | {"w": d["w"]} for _, d in pairs
    ]
    sub_trained, _ = _train_rows(spec.build(), sub, sub_grads, optax.apply_updates)
    start_state = spec.build().init(params)
    for name, shape in TABLES.items():
        others = np.setdiff1d(np.arange(shape[0]), touched[name])
        np.testing.assert_array_equal(sparse[name][others], params[name][others])
        for new, old in zip(jax.tree.leaves(s_state), jax.tree.leaves(start_state)):
            if new.shape == shape:
                np.testing.assert_array_equal(new[others], old[others])
        # (Rows keyed by their ids: a quantized state rounds the sub-table's rows, at
        # other positions, differently.)
        assert_close_to_reference(
            spec,
            sparse[name][touched[name]],
            sub_trained[name],
            params[name][touched[name]],
            rtol=1e-5,
            atol=1e-6,
        )
    if spec.lazy_matches_dense:
        dense, _ = _train_rows(spec.build(), params, [p[1] for p in pairs], optax.apply_updates)
        assert_trees_close(sparse, dense, rtol=1e-5, atol=1e-6)


# (ftrl-int8 shares the row compaction with ftrl and the 8-bit rows with adagrad-int8.)
BOUNDED = [
    s
    for s in ROW_SPARSE
    if "unique_rows" in inspect.signature(s.make).parameters and s.name != "ftrl-int8"
]


# Slack 3 (padding entries) on one spec of each state layout the engine compacts:
# the padding is the engine's, the same for every rule (CI time is bounded).
PADDED = {"sparse_adagrad-dense-leaves", "ftrl", "ftrl-stacked_slots", "sm3", "adagrad-int8"}
BOUND_CASES = [(s, 0) for s in BOUNDED] + [(s, 3) for s in BOUNDED if s.name in PADDED]


@pytest.mark.parametrize(
    "spec, slack", BOUND_CASES, ids=[f"{slack}-{s.name}" for s, slack in BOUND_CASES]
)
def test_row_sparse_unique_rows_bound_trains_bit_for_bit_as_no_bound(spec, slack):
    """unique_rows=U compacts a step's distinct live ids into U entries (padding
    and out-of-range ids take none); with U the exact distinct count of the
    largest table (slack 0) or more, training is bit for bit the unbounded one,
    and the update has U entries per table (fewer ids than U: one per id)."""
    touched = {"t": np.array([1, 4, 5, 9]), "v": np.array([0, 7])}
    params = _tables()
    grads = []
    for sparse, _ in _row_grads(touched):
        extended = dict(sparse)
        for name in TABLES:
            g = sparse[name]
            ids = jnp.concatenate([g.indices, jnp.array([-1, 99], g.indices.dtype)])
            values = jnp.concatenate([g.values, jnp.ones((2,) + g.values.shape[1:])])
            extended[name] = adagrad_jax.RowSparse(ids, values)
        grads.append(extended)
    bound = len(touched["t"]) + slack
    bounded, b_state = _train_rows(
        spec.build(unique_rows=bound), params, grads, adagrad_jax.apply_updates
    )
    free, f_state = _train_rows(spec.build(), params, grads, adagrad_jax.apply_updates)
    for new, old in zip(jax.tree.leaves((bounded, b_state)), jax.tree.leaves((free, f_state))):
        np.testing.assert_array_equal(new, old)
    updates, _ = spec.build(unique_rows=bound).update(grads[0], spec.build().init(params), params)
    assert updates["t"].indices.shape == (bound,)  # t: 7 ids, at least `bound`
    assert updates["v"].indices.shape == (min(bound, 5),)  # v: 5 ids


@parametrize_row_sparse
def test_row_sparse_step_is_in_place_without_table_sized_temporaries(spec):
    """Source: XLA's memory analysis of the compiled, donated step on a
    50000 x 8 float32 table with 256 ids: temporaries stay k-sized and the
    table and every table-shaped state buffer are updated in place."""
    num_rows, dim, k = 50_000, 8, 256
    table_bytes = num_rows * dim * 4
    tx = spec.build()

    def step(params, state, ids, values):
        updates, state = tx.update({"t": adagrad_jax.RowSparse(ids, values)}, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    params = {"t": jnp.zeros((num_rows, dim))}
    state = tx.init(params)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if x.shape == (num_rows, dim))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, num_rows, k), jnp.int32)
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(params, state, ids, jnp.ones((k, dim))).compile()
    )
    memory = compiled.memory_analysis()
    assert memory.temp_size_in_bytes < table_bytes // 10, memory
    assert memory.alias_size_in_bytes >= table_bytes + state_bytes, memory


# --- an 8-device mesh, Explicit and Auto axes (tests/mesh_conformance.py) ------


@pytest.fixture(scope="module")
def mesh_report():
    """Runs every spec on a simulated 8-device mesh in one fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "tests.mesh_conformance"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@parametrize
@pytest.mark.parametrize("axes", ["Explicit", "Auto"])
def test_state_follows_parameter_shardings_on_an_8_device_mesh(spec, axes, mesh_report):
    """state_shardings gives the state's placement; eager and jitted init give it,
    update keeps it and its types, and a lax.scan over steps compiles."""
    assert mesh_report[spec.name][axes] == "ok"


# --- non-finite gradients (issue 11): the `nonfinite` policy of every optimizer ----


def _with_nan(grads, value=np.nan):
    """`grads` with entry [1, 2] of leaf "w" replaced by `value` (NaN or inf)."""
    return {**grads, "w": grads["w"].at[1, 2].set(value)}


def _has_nonfinite(tree) -> bool:
    return any(not np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


@parametrize
def test_nonfinite_propagate_is_the_default_and_the_rule(spec):
    """Default "propagate": the state keeps its usual type and the NaN reaches the
    state or the update, as the formula says (and as optax and PyTorch do)."""
    params = make_params()
    (g,) = make_grads(params, 1)
    tx = spec.build()
    state = tx.init(params)
    assert not isinstance(state, adagrad_jax.NonfiniteState)
    assert jax.tree.structure(state) == jax.tree.structure(
        spec.build(nonfinite="propagate").init(params)
    )
    updates, new_state = jax.jit(tx.update)(_with_nan(g), state, params)
    assert _has_nonfinite((updates, new_state))


@parametrize
def test_nonfinite_skip_step_keeps_state_and_params(spec, bad=np.nan):
    """ "skip_step": every state array (counts included) and every parameter stay
    bit for bit; the counter records the step; the next finite step is the one a
    fresh optimizer would take (the skipped step left no trace)."""
    params = make_params()
    g1, g2 = make_grads(params, 2)
    tx = spec.build(nonfinite="skip_step")
    state = tx.init(params)
    update = jax.jit(tx.update)
    updates, skipped = update(_with_nan(g1, bad), state, params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, np.zeros_like(u))
    jax.tree.map(np.testing.assert_array_equal, skipped.inner_state, state.inner_state)
    assert int(skipped.nonfinite_steps) == 1
    after, after_state = update(g2, skipped, params)
    fresh, fresh_state = update(g2, state, params)
    assert_trees_close(after, fresh, rtol=0)
    assert_trees_close(after_state.inner_state, fresh_state.inner_state, rtol=0)
    assert int(after_state.nonfinite_steps) == 1


@parametrize
def test_nonfinite_skip_coordinate_keeps_that_coordinate(spec, bad=-np.inf):
    """ "skip_coordinate": the bad coordinate gets a zero update and nothing
    becomes non-finite; for coordinatewise rules every other coordinate takes
    exactly the step "propagate" gives it, and the bad one keeps its accumulator."""
    params = make_params()
    (g,) = make_grads(params, 1)
    tx = spec.build(nonfinite="skip_coordinate")
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(_with_nan(g, bad), state, params)
    assert not _has_nonfinite((updates, new_state))
    assert float(updates["w"][1, 2]) == 0.0
    assert int(new_state.nonfinite_steps) == 1
    if not spec.coordinatewise:
        return
    plain = spec.build()
    expected, _ = jax.jit(plain.update)(_with_nan(g, bad), plain.init(params), params)
    mask = np.ones((3, 4), bool)
    mask[1, 2] = False
    # Equal up to XLA's fusion of the two programs (an ulp).
    np.testing.assert_allclose(
        np.asarray(updates["w"])[mask], np.asarray(expected["w"])[mask], rtol=1e-6
    )
    assert_trees_close(
        {k: v for k, v in updates.items() if k != "w"},
        {k: v for k, v in expected.items() if k != "w"},
        rtol=1e-6,
    )
    if spec.accumulators is not None:
        for new, old in zip(
            spec.accumulators(new_state.inner_state), spec.accumulators(state.inner_state)
        ):
            if np.shape(new) == (3, 4):
                if spec.quantized_state:  # requantized with its block: within a level
                    assert abs(float(new[1, 2]) / float(old[1, 2]) - 1) < 0.1
                else:
                    assert float(new[1, 2]) == float(old[1, 2])


@parametrize_row_sparse
@pytest.mark.parametrize("policy", ["skip_coordinate", "skip_step"])
def test_nonfinite_row_sparse(spec, policy):
    """Tables: a NaN in one id's row values. skip_coordinate: that coordinate of
    that row keeps parameter and state, every other touched coordinate takes the
    step it takes without the NaN elsewhere; skip_step: nothing moves."""
    params = _tables()
    (pair,) = _row_grads({"t": np.array([1, 4, 4]), "v": np.array([2])}, num_steps=1)
    sparse = pair[0]
    bad = dict(
        sparse,
        t=adagrad_jax.RowSparse(sparse["t"].indices, sparse["t"].values.at[0, 1].set(jnp.nan)),
    )
    tx = spec.build(nonfinite=policy)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(bad, state, params)
    trained = adagrad_jax.apply_updates(params, updates)
    assert not _has_nonfinite((trained, new_state))
    assert int(new_state.nonfinite_steps) == 1
    if policy == "skip_step":
        assert_trees_close(trained, params, rtol=0)
        jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
        return
    row = int(sparse["t"].indices[0])
    assert float(trained["t"][row, 1]) == float(params["t"][row, 1])
    # The skipped entry counts as a zero gradient: the plain rule on that gradient.
    plain = spec.build()
    zeroed = dict(
        sparse, t=adagrad_jax.RowSparse(sparse["t"].indices, sparse["t"].values.at[0, 1].set(0))
    )
    expected, _ = jax.jit(plain.update)(zeroed, plain.init(params), params)
    expected = adagrad_jax.apply_updates(params, expected)
    mask = np.ones(TABLES["t"], bool)
    if spec.shares_row_state:  # the row shares its state: the whole row keeps its values
        mask[row] = False
        np.testing.assert_array_equal(trained["t"][row], params["t"][row])
    else:  # per coordinate, or coupled (SM3's covers): the skipped coordinate stays
        mask[row, 1] = False
    np.testing.assert_allclose(
        np.asarray(trained["t"])[mask], np.asarray(expected["t"])[mask], rtol=1e-6
    )
    assert_trees_close(
        {k: trained[k] for k in ("v", "w")}, {k: expected[k] for k in ("v", "w")}, rtol=1e-6
    )
