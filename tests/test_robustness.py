"""Row-sparse and run-time defects found by probing v0.1 (issue 11, robustness half),
and the `nonfinite` policy's composition with optax and its cost.

Each defect test fails on the code before the fix and names the defect it covers.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse
from tests import specs as specs_lib

ROW_SPARSE_SPECS = [s for s in specs_lib.SPECS if s.row_sparse]
# The peers' presets (compat) keep their peers' arguments: no out_of_range.
ID_CHECKING_SPECS = [
    s for s in ROW_SPARSE_SPECS if "out_of_range" in inspect.signature(s.make).parameters
]


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    return step


# --- RowSparse: copy, deepcopy, pickle, astype ----------------------------------


@pytest.mark.parametrize(
    "clone",
    [copy.copy, copy.deepcopy, lambda r: pickle.loads(pickle.dumps(r))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_row_sparse_copies_and_pickles(clone):
    # Before: AttributeError "RowSparse is immutable ... (tried to set '_guard')".
    g = RowSparse(jnp.array([2, 0, 2]), jnp.arange(6.0).reshape(3, 2))
    c = clone(g)
    assert isinstance(c, RowSparse)
    np.testing.assert_array_equal(c.indices, g.indices)
    np.testing.assert_array_equal(c.values, g.values)
    np.testing.assert_array_equal(c.todense(3), g.todense(3))
    with pytest.raises(TypeError, match="does not support RowSparse"):
        jax.jit(lambda r: jax.tree.map(lambda x: x * 2, r))(c)  # the guard came back too
    tx = adagrad_jax.adagrad(0.1)
    params = {"t": jnp.ones((3, 2))}
    u, _ = tx.update({"t": c}, tx.init(params), params)
    assert isinstance(u["t"], RowSparse)


def test_row_sparse_astype_and_tree_map_route():
    # Before: jax.tree.map(lambda x: x.astype(...), g) failed with "Cannot call
    # abstract method astype" and RowSparse had no way to cast its values.
    g = RowSparse(jnp.array([1, 3]), jnp.ones((2, 2)))
    tree = {"t": g, "b": jnp.ones(2)}
    cast = jax.tree.map(
        lambda x: x.astype(jnp.bfloat16), tree, is_leaf=lambda x: isinstance(x, RowSparse)
    )
    assert cast["t"].values.dtype == jnp.bfloat16 and cast["b"].dtype == jnp.bfloat16
    assert cast["t"].indices.dtype == g.indices.dtype
    with pytest.raises(TypeError, match=r"RowSparse.astype\(dtype=.*int32.*floating or complex"):
        g.astype(jnp.int32)
    # Under jit the plain map's error names the guard and where to read the fix.
    with pytest.raises(ValueError, match=re.escape("help(adagrad_jax.RowSparse)")):
        jax.jit(lambda t: jax.tree.map(lambda x: x.astype(jnp.bfloat16), t))(tree)
    assert "RowSparse.astype" in RowSparse.__doc__


@pytest.mark.parametrize(
    "source",
    ["constructor", "jit output", "device_put", "deepcopy", "pickle", "tree.map"],
)
@pytest.mark.parametrize("method", ["astype", "sum", "mean", "max", "__array__"])
def test_leafwise_method_on_row_sparse_is_refused(source, method):
    # A method mapped over every leaf fails on the guard leaf before it reaches
    # the row ids, wherever the RowSparse came from. Under jit the error names
    # the guard's dtype, key<adagrad_jax.RowSparse guard: ...>, and the fix.
    # Eagerly it is JAX's own error for a method on a concrete key array, which
    # does not name RowSparse: until issue 16 instance methods were patched onto
    # the guard (setattr) to name it; the plain design trades that message away
    # (see RowSparse's docstring). Never a silent cast of the ids.
    g = RowSparse(jnp.array([1, 3]), jnp.ones((2, 2)))
    g = {
        "constructor": lambda: g,
        "jit output": lambda: jax.jit(lambda t: t)(g),
        "device_put": lambda: jax.device_put(g),
        "deepcopy": lambda: copy.deepcopy(g),
        "pickle": lambda: pickle.loads(pickle.dumps(g)),
        "tree.map": lambda: jax.tree.map(lambda x: x, g),
    }[source]()
    call = {"astype": lambda x: x.astype(jnp.bfloat16), "__array__": np.asarray}.get(
        method, lambda x: getattr(x, method)()
    )
    tree = {"t": g, "b": jnp.ones(2)}
    if method == "__array__":
        eager_error, eager_text = TypeError, "JAX array with PRNGKey dtype cannot be converted"
    else:
        eager_error, eager_text = NotImplementedError, f"Cannot call abstract method {method}"
    with pytest.raises(eager_error, match=re.escape(eager_text)):
        jax.tree.map(call, tree)
    with pytest.raises((TypeError, ValueError)) as info:
        # Only the table: np.asarray fails on any traced leaf.
        jax.jit(lambda t: jax.tree.map(call, t))({"t": g})
    message = str(info.value)
    assert "key<adagrad_jax.RowSparse guard: this transform does not support RowSparse" in message
    assert "adagrad_jax.on_row_values" in message
    # The RowSparse itself is unchanged and still usable.
    np.testing.assert_array_equal(g.indices, [1, 3])
    assert g.astype(jnp.bfloat16).values.dtype == jnp.bfloat16


# --- a table with 0 rows ------------------------------------------------------------


@pytest.mark.parametrize("spec", ROW_SPARSE_SPECS, ids=[s.name for s in ROW_SPARSE_SPECS])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_zero_row_table_with_ids_changes_nothing(spec, jit):
    # Before: a gather error from the row path of every row-sparse optimizer.
    tx = spec.build()
    params = {"t": jnp.zeros((0, 3)), "w": jnp.ones(2)}
    state = tx.init(params)
    grads = {"t": RowSparse(jnp.array([0, 5, -1]), jnp.ones((3, 3))), "w": jnp.ones(2)}
    step = jax.jit(_step(tx)) if jit else _step(tx)
    new_params, new_state = step(params, state, grads)
    assert new_params["t"].shape == (0, 3)
    for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
        assert new.shape == old.shape and new.dtype == old.dtype


def test_zero_row_table_out_of_range_error_reports_the_id():
    tx = adagrad_jax.adagrad(0.1, out_of_range="error")
    params = {"t": jnp.zeros((0, 3))}
    grads = {"t": RowSparse(jnp.array([-1, 4]), jnp.ones((2, 3)))}
    with pytest.raises(
        ValueError,
        match=r"row id 4 at position 1, but the table has 0 rows"
        r" \(no id is valid",
    ):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_value_and_row_grad_on_a_zero_row_table(jit):
    # Before: a gather error. Every lookup of an empty table is a zero row.
    params = {"t": jnp.zeros((0, 2)), "w": jnp.array([1.0, 2.0])}
    fn = adagrad_jax.value_and_row_grad(lambda r: jnp.sum((r["t"] @ r["w"] - 1.0) ** 2))
    fn = jax.jit(fn) if jit else fn
    value, grads = fn(params, {"t": jnp.array([3, 0, -1]), "w": None})
    assert float(value) == 3.0  # three zero rows: (0 - 1)^2 each
    np.testing.assert_array_equal(grads["t"].indices, [3, 0, -1])
    np.testing.assert_array_equal(grads["t"].values, -2.0 * np.array([[1.0, 2.0]] * 3))


# --- row_wise=True without params ----------------------------------------------------


def test_row_wise_refuses_rows_it_cannot_check_before_any_state_change():
    # Before: without params, RowSparse rows of width 7 for a width-3 table were
    # accumulated (state changed) and only apply_updates refused them.
    tx = adagrad_jax.adagrad(0.1, row_wise=True)
    params = {"emb": jnp.zeros((4, 3))}
    state = tx.init(params)
    wrong = {"emb": RowSparse(jnp.array([1]), jnp.ones((1, 7)))}
    message = re.escape("adagrad(row_wise=True): update(updates, state, params) needs params")
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match=message):
            update(wrong, state)  # refused at trace time: no state was computed
    with pytest.raises(ValueError, match=r"table's rows have shape \(3,\)"):
        jax.eval_shape(tx.update, wrong, state, params)
    dense_wrong = {"emb": jnp.ones((4, 7))}
    with pytest.raises(
        ValueError,
        match=re.escape("updates['emb'] has shape (4, 7) but params['emb'] has shape (4, 3)"),
    ):
        tx.update(dense_wrong, state, params)
    right = {"emb": RowSparse(jnp.array([1]), jnp.ones((1, 3)))}
    u, new_state = tx.update(right, state, params)
    assert new_state[1].sum_of_squares["emb"].shape == (4,)


# --- wide ids from value_and_row_grad ---------------------------------------------------


def test_value_and_row_grad_keeps_wide_ids_and_error_mode_reports_them():
    # Before: with x64 an id of 2**32 + 3 came back as 2147483647, so
    # out_of_range="error" reported the wrong id.
    with jax.enable_x64(True):
        params = {"t": jnp.zeros((4, 2), jnp.float32)}
        fn = adagrad_jax.value_and_row_grad(lambda r: jnp.sum(r["t"]))
        ids = jnp.array([1, 2**32 + 3, -7], jnp.int64)
        _, grads = jax.jit(fn)(params, {"t": ids})
        assert grads["t"].indices.dtype == jnp.int64
        np.testing.assert_array_equal(grads["t"].indices, [1, 2**32 + 3, -1])
        _, grads_u = fn(params, {"t": jnp.array([2**32 + 3], jnp.uint64)})
        np.testing.assert_array_equal(grads_u["t"].indices, [2**32 + 3])
        tx = adagrad_jax.adagrad(0.1, out_of_range="error")
        state = tx.init(params)
        with pytest.raises(
            jax.errors.JaxRuntimeError, match=re.escape(f"row id {2**32 + 3} at position 1")
        ):
            jax.block_until_ready(jax.jit(_step(tx))(params, state, grads))
        drop = adagrad_jax.adagrad(0.1)
        new_params, _ = jax.jit(_step(drop))(params, drop.init(params), grads)
        np.testing.assert_array_equal(np.asarray(new_params["t"])[[0, 2, 3]], 0.0)  # row 1 moved
    # Without 64-bit mode int32 ids are exact, as before.
    _, grads = fn({"t": jnp.zeros((4, 2))}, {"t": jnp.array([3, -2])})
    assert grads["t"].indices.dtype == jnp.int32


# --- out_of_range="error" under plain jax.jit ---------------------------------------------


@pytest.mark.parametrize("spec", ID_CHECKING_SPECS, ids=[s.name for s in ID_CHECKING_SPECS])
def test_out_of_range_error_works_in_a_plain_jitted_step(spec):
    # Before: "not functionalized" at trace time unless wrapped in checkify.
    tx = spec.build(out_of_range="error")
    params = {"t": jnp.zeros((5, 2)), "w": jnp.ones(2)}
    state = tx.init(params)
    step = jax.jit(_step(tx))
    good = {"t": RowSparse(jnp.array([4, -1, 0]), jnp.ones((3, 2))), "w": jnp.ones(2)}
    jax.block_until_ready(step(params, state, good))
    bad = {"t": RowSparse(jnp.array([4, 5, 6]), jnp.ones((3, 2))), "w": jnp.ones(2)}
    fn = re.escape(f"(out_of_range='error'): updates['t'] holds row id 5 at position 1")
    with pytest.raises(jax.errors.JaxRuntimeError, match=fn):
        jax.block_until_ready(step(params, state, bad))
    with pytest.raises(ValueError, match=fn):
        _step(tx)(params, state, bad)


def test_out_of_range_error_under_vmap_raises_only_for_bad_members():
    tx = adagrad_jax.scale_by_adagrad(out_of_range="error")
    state = tx.init(jnp.zeros((5, 1)))

    def update(ids):
        return tx.update(RowSparse(ids, jnp.ones((2, 1))), state)[0].values

    batched = jax.jit(jax.vmap(update))
    jax.block_until_ready(batched(jnp.array([[0, 1], [2, 4]])))
    with pytest.raises(jax.errors.JaxRuntimeError, match="row id 9 at position 0"):
        jax.block_until_ready(batched(jnp.array([[0, 1], [9, 4]])))


# --- non-finite gradients: composition with optax and cost -------------------------------


def test_skip_step_matches_optax_apply_if_finite():
    """Source: optax.apply_if_finite keeps the inner state and gives zero updates
    on a non-finite step; nonfinite="skip_step" does the same inside the optimizer
    (no retry limit), and the two compose."""
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [
        {"w": jnp.array([0.3, -0.1, 0.2])},
        {"w": jnp.array([0.1, jnp.nan, 0.4])},
        {"w": jnp.array([-0.2, 0.5, jnp.inf])},
        {"w": jnp.array([0.4, 0.4, -0.1])},
    ]
    ours = adagrad_jax.adagrad(0.1, nonfinite="skip_step")
    theirs = optax.apply_if_finite(adagrad_jax.adagrad(0.1), max_consecutive_errors=10)
    both = optax.apply_if_finite(ours, max_consecutive_errors=10)
    results = []
    for tx in (ours, theirs, both):
        p, state = params, tx.init(params)
        for g in grads:
            u, state = jax.jit(tx.update)(g, state, p)
            p = optax.apply_updates(p, u)
        results.append((p, state))
    np.testing.assert_array_equal(results[0][0]["w"], results[1][0]["w"])
    np.testing.assert_array_equal(results[0][0]["w"], results[2][0]["w"])
    assert int(results[0][1].nonfinite_steps) == 2
    assert int(results[1][1].total_notfinite) == 2


def test_skip_coordinate_matches_optax_zero_nans_for_adagrad():
    """Source: for Adagrad a zero gradient entry leaves G and w where they are,
    so optax.zero_nans (NaN -> 0) before adagrad equals skip_coordinate for NaN.
    zero_nans leaves inf alone; skip_coordinate also skips inf. For the
    regularized rules a zero gradient still shrinks w, where skip_coordinate
    keeps it: only skip_coordinate keeps the coordinate as it was."""
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [{"w": jnp.array([0.3, jnp.nan, 0.2])}, {"w": jnp.array([0.1, 0.2, jnp.nan])}]
    ours = adagrad_jax.adagrad(0.1, nonfinite="skip_coordinate")
    theirs = optax.chain(optax.zero_nans(), adagrad_jax.adagrad(0.1))
    out = []
    for tx in (ours, theirs):
        p, state = params, tx.init(params)
        for g in grads:
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
        out.append(p["w"])
    np.testing.assert_array_equal(out[0], out[1])

    prox = adagrad_jax.proximal_adagrad(0.1, l1=0.5, nonfinite="skip_coordinate")
    u, _ = prox.update(grads[0], prox.init(params), params)
    assert float(u["w"][1]) == 0.0  # kept; zero_nans would let L1 shrink it


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: adagrad_jax.adagrad(0.1, **kw),
        lambda **kw: adagrad_jax.ftrl(0.1, l1=0.01, **kw),
        lambda **kw: adagrad_jax.shampoo(0.1, block_size=4, **kw),
    ],
    ids=["adagrad", "ftrl", "shampoo"],
)
def test_default_policy_compiles_to_the_plain_step(make):
    """The default adds nothing: the compiled update of nonfinite="propagate" is the
    HLO of the optimizer without the argument, with no is-finite pass over the
    parameters; a skip policy adds them."""
    params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}

    def hlo(tx):
        state = tx.init(params)
        return jax.jit(tx.update).lower(params, state, params).as_text()

    default, explicit = hlo(make()), hlo(make(nonfinite="propagate"))
    assert default == explicit
    skipping = hlo(make(nonfinite="skip_coordinate"))
    # Shampoo's eigendecomposition checks its own statistics; the policy adds more.
    assert default.count("is_finite") < skipping.count("is_finite")


def test_skip_coordinate_row_wise_skips_the_whole_row():
    # The row-wise accumulator is shared by the row: one NaN skips the row.
    tx = adagrad_jax.adagrad(0.1, row_wise=True, nonfinite="skip_coordinate")
    params = {"t": jnp.ones((3, 2)), "d": jnp.ones((2, 2))}
    state = tx.init(params)
    grads = {
        "t": RowSparse(jnp.array([0, 2]), jnp.array([[1.0, jnp.nan], [1.0, 1.0]])),
        "d": jnp.array([[jnp.inf, 1.0], [1.0, 1.0]]),
    }
    u, new_state = tx.update(grads, state, params)
    p = adagrad_jax.apply_updates(params, u)
    np.testing.assert_array_equal(p["t"][0], [1.0, 1.0])
    np.testing.assert_array_equal(p["d"][0], [1.0, 1.0])
    assert float(p["t"][2, 0]) < 1.0 and float(p["d"][1, 0]) < 1.0
    sums = new_state.inner_state[1].sum_of_squares
    np.testing.assert_array_equal(sums["t"], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(sums["d"], [0.0, 1.0])
