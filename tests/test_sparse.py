"""Tests of the row-sparse path: adagrad_jax._src.tables.

Sources of expected values, named in each test:
- "dense Adagrad": adagrad_jax.adagrad fed the equivalent dense gradient (the
  sum of the rows' values at each id, built with NumPy's np.add.at), itself
  checked against the formula by the core suite, with its update and apply
  compiled apart (see _run_dense_reference). Gradient values are multiples of
  0.5 and small, so sums of duplicates are exact in every dtype and the two
  paths must agree bit for bit.
- "NumPy reference": the documented formula written in float64 NumPy below.
- "hand computation": worked out in the comment next to the assertion.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse

LR, TAU, EPS = 0.1, 0.1, 1e-7


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _ids(rng, num_rows, k):
    """Ids with many duplicates: a Zipf draw folded into [0, num_rows)."""
    return ((rng.zipf(1.3, k) - 1) % num_rows).astype(np.int32)


def _dyadic(rng, shape, dtype):
    """Multiples of 0.5 in [-2, 2]: every sum below is exact, even in bfloat16."""
    x = rng.integers(-4, 5, shape).astype(np.float32) * 0.5
    if jnp.issubdtype(dtype, jnp.complexfloating):
        y = rng.integers(-4, 5, shape).astype(np.float32) * 0.5
        return jnp.asarray(x + 1j * y).astype(dtype)
    return jnp.asarray(x).astype(dtype)


def _dense(num_rows, ids, values):
    """The dense gradient equal to RowSparse(ids, values): np.add.at in float64/complex128."""
    values = np.asarray(
        jnp.asarray(values).astype(jnp.complex64 if jnp.iscomplexobj(values) else jnp.float32)
    )
    dtype = np.complex128 if np.iscomplexobj(values) else np.float64
    out = np.zeros((num_rows,) + values.shape[1:], dtype)
    ids = np.asarray(ids)
    keep = (ids >= 0) & (ids < num_rows)
    np.add.at(out, ids[keep], values[keep])
    return out


def _run(tx, params, grads_seq, apply):
    """Trains with one jit-compiled step (update and apply fused)."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state

    state = tx.init(params)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def _run_dense_reference(tx, params, grads_seq):
    """Dense Adagrad with update and apply compiled apart.

    Compiled together, XLA may contract ``w + (-lr) * u`` into one fused
    multiply-add with a single rounding; apart, each operation is rounded as
    written, as the row-sparse step (whose add happens in the scatter) does.
    """
    update, apply = jax.jit(tx.update), jax.jit(optax.apply_updates)
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = apply(params, updates)
    return params, state


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _assert_trees_close(a, b, rtol, atol=0.0):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x).astype(np.float64), np.asarray(y).astype(np.float64), rtol=rtol, atol=atol
        ),
        a,
        b,
    )


SHAPES = {"a": (40, 3), "b": (25, 2, 2), "c": (30,)}  # 2-D, 3-D and 1-D tables


def _tables(dtype):
    key = jax.random.key(0)
    params = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        x = jax.random.normal(jax.random.fold_in(key, i), shape)
        params[name] = x.astype(dtype)
    params["w"] = jnp.linspace(-1.0, 1.0, 3).astype(dtype)  # a dense leaf
    return params


def _gradient_sequences(dtype, steps=4, k=24, seed=1):
    """Row-sparse gradients and their dense equivalents for `steps` steps."""
    rng = np.random.default_rng(seed)
    sparse_seq, dense_seq = [], []
    for _ in range(steps):
        sparse, dense = {}, {}
        for name, shape in SHAPES.items():
            ids = _ids(rng, shape[0], k)
            values = _dyadic(rng, (k,) + shape[1:], dtype)
            sparse[name] = RowSparse(jnp.asarray(ids), values)
            dense[name] = jnp.asarray(_dense(shape[0], ids, values)).astype(dtype)
        sparse["w"] = dense["w"] = _dyadic(rng, (3,), dtype)
        sparse_seq.append(sparse)
        dense_seq.append(dense)
    return sparse_seq, dense_seq


# ---------------------------------------------------------------------------
# equivalence with dense Adagrad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
def test_row_sparse_training_equals_dense_training(dtype):
    # Source: dense Adagrad. Ids repeat heavily (Zipf), three tables, four steps.
    sparse_seq, dense_seq = _gradient_sequences(dtype)
    params = _tables(dtype)
    sparse_params, sparse_state = _run(
        adagrad_jax.sparse_adagrad(LR, TAU, EPS), params, sparse_seq, adagrad_jax.apply_updates
    )
    dense_params, dense_state = _run_dense_reference(
        adagrad_jax.adagrad(LR, TAU, EPS), params, dense_seq
    )
    _assert_trees_equal(sparse_params, dense_params)
    _assert_trees_equal(sparse_state, dense_state)  # same structure, same accumulators
    for name, p in sparse_params.items():
        assert p.dtype == jnp.dtype(dtype), name
    acc = sparse_state[1].sum_of_squares
    expected = jnp.float32
    assert all(a.dtype == jnp.dtype(expected) for a in jax.tree.leaves(acc))


def test_random_values_and_schedule_match_dense():
    # Source: dense Adagrad. Normal values sum in a different order than the
    # dense scatter-add, so float32 rounding may differ in the last bits.
    rng = np.random.default_rng(2)
    num_rows, dim, k = 64, 5, 48
    schedule = optax.linear_schedule(0.5, 0.05, transition_steps=4)
    kwargs = {"initial_accumulator_value": 0.0, "eps": 1e-8, "eps_root": 1e-6}
    params = {"t": jnp.asarray(rng.standard_normal((num_rows, dim)), jnp.float32)}
    sparse_seq, dense_seq = [], []
    for _ in range(5):
        ids = _ids(rng, num_rows, k)
        values = jnp.asarray(rng.standard_normal((k, dim)), jnp.float32)
        sparse_seq.append({"t": RowSparse(jnp.asarray(ids), values)})
        dense_seq.append({"t": jnp.asarray(_dense(num_rows, ids, values), jnp.float32)})
    sparse = _run(
        adagrad_jax.sparse_adagrad(schedule, **kwargs),
        params,
        sparse_seq,
        adagrad_jax.apply_updates,
    )
    dense = _run_dense_reference(adagrad_jax.adagrad(schedule, **kwargs), params, dense_seq)
    _assert_trees_close(sparse, dense, rtol=1e-5, atol=1e-6)
    assert int(sparse[1][2].count) == 5  # the schedule's counter advanced once per step


def test_dense_only_tree_is_exactly_adagrad_including_weight_decay():
    # Source: dense Adagrad; with no RowSparse leaf the two optimizers coincide.
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "n": None}
    grads = [
        {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "n": None} for _ in range(3)
    ]
    kwargs = {"learning_rate": 0.3, "weight_decay": 0.01, "eps_root": 1e-3}
    # Both compiled the same way (update and apply fused): the same program.
    sparse = _run(adagrad_jax.sparse_adagrad(**kwargs), params, grads, adagrad_jax.apply_updates)
    dense = _run(adagrad_jax.adagrad(**kwargs), params, grads, optax.apply_updates)
    _assert_trees_equal(sparse, dense)


def test_duplicate_lookup_equals_doubled_gradient():
    # Source: dense Adagrad's rule: two lookups of row r with g give the row
    # gradient g + g = 2g, which is squared once.
    tx = adagrad_jax.sparse_adagrad(LR)
    params = jnp.zeros((6, 2))
    g = jnp.array([[1.5, -0.5]])
    twice = RowSparse(jnp.array([4, 4]), jnp.concatenate([g, g]))
    once = RowSparse(jnp.array([4]), 2 * g)
    out_twice = _run(tx, params, [twice, twice], adagrad_jax.apply_updates)
    out_once = _run(tx, params, [once, once], adagrad_jax.apply_updates)
    _assert_trees_equal(out_twice, out_once)
    # Hand computation: G_4 = (3, 1) after one step, not 2 * (1.5^2, 0.5^2).
    first = jax.jit(tx.update)(twice, tx.init(params))[1]
    np.testing.assert_array_equal(first[1].sum_of_squares[4], [9.0, 1.0])


def test_table_touched_by_every_id():
    # Source: dense Adagrad; every row appears, most of them twice or more.
    rng = np.random.default_rng(4)
    num_rows = 12
    ids = np.concatenate([rng.permutation(num_rows), _ids(rng, num_rows, 20)]).astype(np.int32)
    values = jnp.asarray(rng.integers(1, 5, (ids.size, 3)) * 0.5, jnp.float32)  # no zero sums
    params = {"t": jnp.asarray(rng.standard_normal((num_rows, 3)), jnp.float32)}
    sparse = _run(
        adagrad_jax.sparse_adagrad(LR),
        params,
        [{"t": RowSparse(jnp.asarray(ids), values)}],
        adagrad_jax.apply_updates,
    )
    dense = _run_dense_reference(
        adagrad_jax.adagrad(LR),
        params,
        [{"t": jnp.asarray(_dense(num_rows, ids, values), jnp.float32)}],
    )
    _assert_trees_equal(sparse, dense)
    assert not np.any(np.asarray(sparse[0]["t"]) == np.asarray(params["t"]))  # every row moved


def _dedup_reference(ids, num_rows):
    """_dedup's documented result, from NumPy's first positions of each id."""
    ids = np.asarray(ids)
    k = ids.size
    slot = np.arange(k, dtype=np.int32)
    rows = num_rows + np.arange(k, dtype=np.int32)
    live = ids < num_rows
    if live.any():
        distinct, first, inverse = np.unique(ids[live], return_index=True, return_inverse=True)
        positions = np.flatnonzero(live)[first]  # first position of each distinct live id
        slot[live] = positions[inverse.reshape(-1)]
        rows[positions] = distinct
    return rows, slot


@pytest.mark.parametrize("table_bits", [None, 1, 3])
def test_dedup_matches_numpy_reference(table_bits):
    # Source: NumPy reference (_dedup_reference). table_bits=1 and 3 force 2 and
    # 8 buckets, so ids collide in every round and the loop runs many rounds.
    from adagrad_jax._src.tables.ids import dedup as _dedup

    rng = np.random.default_rng(11)
    num_rows = 1000
    cases = [
        _ids(rng, num_rows, 300),  # Zipf: many repeats
        rng.permutation(num_rows)[:257].astype(np.int32),  # all distinct
        np.full(40, 17, np.int32),  # one id
        np.full(9, num_rows, np.int32),  # all dead
        np.array([5], np.int32),  # k = 1
        np.where(rng.random(200) < 0.3, num_rows, _ids(rng, num_rows, 200)).astype(np.int32),
        np.array([0, num_rows, 0, num_rows - 1, num_rows, num_rows - 1], np.int32),
    ]
    dedup = jax.jit(lambda ids: _dedup(ids, num_rows, table_bits=table_bits))
    for ids in cases:
        rows, slot = dedup(jnp.asarray(ids))
        expected_rows, expected_slot = _dedup_reference(ids, num_rows)
        assert rows.dtype == slot.dtype == jnp.int32
        np.testing.assert_array_equal(slot, expected_slot)
        np.testing.assert_array_equal(rows, expected_rows)


def test_update_lists_distinct_ids_in_order_of_first_appearance():
    # Hand computation, eps = 0, tau = 0 (first step: u = g_r / |g_r|) on a 6-row
    # table; -1 is padding and 9 out of range, both dead:
    #   row 5: 1 + 3 = 4 -> u = 1, G = 16;  row 2: -2 - 5 = -7 -> u = -1, G = 49;
    #   row 0: 7 -> u = 1, G = 49.
    # Rows are listed at each id's first position (0, 1, 6); the other slots j
    # hold the out-of-range id 6 + j and a zero update.
    tx = adagrad_jax.scale_by_sparse_adagrad(eps=0.0)
    g = RowSparse(
        jnp.array([5, 2, 5, -1, 2, 9, 0]),
        jnp.array([[1.0], [-2.0], [3.0], [4.0], [-5.0], [6.0], [7.0]]),
    )
    u, state = jax.jit(tx.update)(g, tx.init(jnp.zeros((6, 1))))
    np.testing.assert_array_equal(u.indices, [5, 2, 8, 9, 10, 11, 0])
    np.testing.assert_array_equal(u.values[:, 0], [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(state.sum_of_squares[:, 0], [49.0, 0.0, 49.0, 0.0, 0.0, 16.0])


# ---------------------------------------------------------------------------
# structure of the compiled step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("row_wise", [False, True])
def test_compiled_step_updates_in_place_without_a_table_sized_temporary(row_wise):
    # Source: XLA's memory analysis of the compiled step. A table is V x D =
    # 100000 x 16 float32 (6.4 MB); a step with k = 512 ids may use k-sized
    # temporaries only, and must alias (update in place) the donated table and
    # accumulator.
    num_rows, dim, k = 100_000, 16, 512
    table_bytes = num_rows * dim * 4
    tx = adagrad_jax.sparse_adagrad(LR, row_wise=row_wise)

    def step(params, state, ids, values):
        updates, state = tx.update({"t": RowSparse(ids, values)}, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    params = {"t": jnp.zeros((num_rows, dim))}
    state = tx.init(params)
    ids = jnp.asarray(_ids(np.random.default_rng(5), num_rows, k))
    values = jnp.ones((k, dim))
    jitted = jax.jit(step, donate_argnums=(0, 1))
    compiled = jitted.lower(params, state, ids, values).compile()
    memory = compiled.memory_analysis()
    state_bytes = (num_rows if row_wise else num_rows * dim) * 4
    assert memory.temp_size_in_bytes < table_bytes // 10, memory
    assert memory.alias_size_in_bytes >= table_bytes + state_bytes, memory
    assert "input_output_alias" in compiled.as_text()

    new_params, _new_state = jitted(params, state, ids, values)
    assert params["t"].is_deleted()  # donated: the step consumed the buffers
    assert float(new_params["t"][int(ids[0]), 0]) == pytest.approx(-LR)

    # The measure tells the two costs apart: the dense path (a dense gradient
    # plus optax.adagrad) needs table-sized temporaries.
    dense_tx = optax.adagrad(LR)

    def dense_step(params, state, ids, values):
        grads = {"t": jnp.zeros_like(params["t"]).at[ids].add(values)}
        updates, state = dense_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    dense_params = {"t": jnp.zeros((num_rows, dim))}
    dense_memory = (
        jax.jit(dense_step, donate_argnums=(0, 1))
        .lower(dense_params, dense_tx.init(dense_params), ids, values)
        .compile()
        .memory_analysis()
    )
    assert dense_memory.temp_size_in_bytes >= table_bytes, dense_memory


def test_step_does_not_retrace_and_row_sparse_passes_through_jit():
    traces = []
    tx = adagrad_jax.sparse_adagrad(LR)

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state, updates

    params = {"t": jnp.zeros((8, 2))}
    state = tx.init(params)
    for seed in range(3):
        ids = jnp.asarray(_ids(np.random.default_rng(seed), 8, 5))
        params, state, updates = step(params, state, {"t": RowSparse(ids, jnp.ones((5, 2)))})
    assert len(traces) == 1
    assert isinstance(updates["t"], RowSparse)  # a jit result too
    assert updates["t"].indices.dtype == jnp.int32 and updates["t"].values.shape == (5, 2)


# ---------------------------------------------------------------------------
# padding, out-of-range ids, empty batches
# ---------------------------------------------------------------------------


def _one_step(tx, params, grads):
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    return jax.jit(adagrad_jax.apply_updates)(params, updates), state


def test_padding_ids_are_skipped():
    # Source: dense Adagrad on the batch without its padding entries; rows 0
    # (pad_id) and 5 (only ever looked up by ... nothing) stay as they were.
    rng = np.random.default_rng(6)
    params = {"t": jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)}
    ids = jnp.array([3, -1, 0, 3, -7, 1, 0], jnp.int32)
    values = _dyadic(rng, (7, 2), jnp.float32)
    keep = np.array([True, False, False, True, False, True, False])
    tx = adagrad_jax.sparse_adagrad(LR, pad_id=0)
    padded = _one_step(tx, params, {"t": RowSparse(ids, values)})
    clean = _one_step(tx, params, {"t": RowSparse(ids[keep], values[keep])})
    _assert_trees_equal(padded, clean)
    np.testing.assert_array_equal(padded[0]["t"][0], params["t"][0])
    np.testing.assert_array_equal(padded[1][1].sum_of_squares["t"][0], [0.0, 0.0])
    # Negative ids never wrap round to the last rows (as a[-1] would).
    np.testing.assert_array_equal(padded[0]["t"][5], params["t"][5])


def test_out_of_range_ids_are_dropped():
    # Source: the same batch without its out-of-range entries. uint32 ids near
    # 2**32 must not wrap to negative (padding) or small (valid) ids.
    rng = np.random.default_rng(7)
    params = {"t": jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)}
    ids = jnp.array([1, 5, 2, 3_000_000_000, 1, 2**31 - 1], jnp.uint32)
    values = _dyadic(rng, (6, 2), jnp.float32)
    keep = np.array([True, False, True, False, True, False])
    tx = adagrad_jax.sparse_adagrad(LR)
    out = _one_step(tx, params, {"t": RowSparse(ids, values)})
    clean = _one_step(tx, params, {"t": RowSparse(ids[keep], values[keep])})
    _assert_trees_equal(out, clean)
    for row in (0, 3, 4):
        np.testing.assert_array_equal(out[0]["t"][row], params["t"][row])


def test_apply_updates_drops_negative_and_out_of_range_rows_and_sums_duplicates():
    # Source: hand computation. Row 1 gets 1 + 2; ids -1 and 3 touch nothing.
    params = {"t": jnp.zeros((3, 2)), "b": jnp.ones(2)}
    updates = {
        "t": RowSparse(jnp.array([1, -1, 3, 1]), jnp.array([[1.0, 1], [5, 5], [7, 7], [2, 2]])),
        "b": jnp.array([0.5, -0.5]),
    }
    out = adagrad_jax.apply_updates(params, updates)
    np.testing.assert_array_equal(out["t"], [[0, 0], [3, 3], [0, 0]])
    np.testing.assert_array_equal(out["b"], [1.5, 0.5])


def _plain_jit_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    return jax.jit(step)


def test_out_of_range_error_mode_names_the_bad_id():
    # Issue 11: the documented mode works in an ordinary jitted step (no checkify).
    tx = adagrad_jax.sparse_adagrad(LR, out_of_range="error", pad_id=0)
    params = {"emb": jnp.zeros((10, 2))}
    state = tx.init(params)
    step = _plain_jit_step(tx)
    ok = {"emb": RowSparse(jnp.array([9, -1, 0, 3]), jnp.ones((4, 2)))}
    new_params, _ = step(params, state, ok)  # padding (-1, pad_id 0) and row 9 are fine
    np.testing.assert_array_equal(new_params["emb"][9], np.float32([-LR, -LR]))

    bad = {"emb": RowSparse(jnp.array([2, 9, 10, 57]), jnp.ones((4, 2)))}
    message = re.escape(
        "sparse_adagrad(out_of_range='error'): updates['emb'] holds row id 10"
        " at position 2, but the table has 10 rows"
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(step(params, state, bad))
    with pytest.raises(ValueError, match=message):
        tx.update(bad, state, params)  # eager: raised at once
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(jax.jit(tx.update)(bad, state, params))


@pytest.mark.parametrize("row_wise", [False, True])
def test_unique_rows_bound_exceeded_raises_and_never_drops(row_wise):
    """A step with more distinct ids than unique_rows raises, eagerly and in a jitted
    step, naming the count; the same step with a large enough bound trains as dense
    Adagrad (dense Adagrad, the file's reference)."""
    tx = adagrad_jax.adagrad(LR, TAU, eps=EPS, row_wise=row_wise, unique_rows=3)
    params = {"emb": jnp.zeros((10, 2))}
    state = tx.init(params)
    step = _plain_jit_step(tx)
    fits = {"emb": RowSparse(jnp.array([4, 1, 4, -1, 12, 1, 8]), jnp.ones((7, 2)))}
    new_params, _ = step(params, state, fits)  # 3 distinct live ids: 4, 1, 8
    dense = adagrad_jax.adagrad(LR, TAU, eps=EPS, row_wise=row_wise)
    reference = optax.apply_updates(
        params, dense.update({"emb": fits["emb"].todense(10)}, dense.init(params), params)[0]
    )
    np.testing.assert_array_equal(new_params["emb"], reference["emb"])

    over = {"emb": RowSparse(jnp.array([4, 1, 4, 2, 8]), jnp.ones((5, 2)))}
    message = re.escape(
        "adagrad(unique_rows=3): updates['emb'] holds 4 distinct row ids, more than"
        " unique_rows=3; no row was updated."
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(step(params, state, over))
    with pytest.raises(ValueError, match=message):
        tx.update(over, state, params)  # eager: raised at once
    np.testing.assert_array_equal(params["emb"], np.zeros((10, 2)))  # not donated: unchanged
    # The next good step runs normally.
    again, _ = step(params, state, fits)
    np.testing.assert_array_equal(again["emb"], reference["emb"])


def test_unique_rows_must_be_a_python_int_not_a_traced_value():
    with pytest.raises(TypeError, match=r"adagrad\(unique_rows=.*must be a Python int"):
        jax.jit(lambda n: adagrad_jax.adagrad(0.1, unique_rows=n).init(jnp.zeros(2)))(3)


def test_out_of_range_error_mode_reports_wide_ids_unclipped():
    tx = adagrad_jax.scale_by_sparse_adagrad(out_of_range="error")
    state = tx.init(jnp.zeros((4, 1)))
    bad = RowSparse(jnp.array([1, 3_000_000_000], jnp.uint32), jnp.ones((2, 1)))
    with pytest.raises(jax.errors.JaxRuntimeError, match="row id 3000000000 at position 1"):
        jax.block_until_ready(jax.jit(tx.update)(bad, state))


def test_empty_batch_changes_nothing():
    # Source: hand computation: no ids, no change; updates keep the (0, ...) shape.
    tx = adagrad_jax.sparse_adagrad(LR, out_of_range="error")
    params = {"t": jnp.ones((4, 3)), "w": jnp.ones(2)}
    state = tx.init(params)
    grads = {"t": RowSparse(jnp.zeros((0,), jnp.int32), jnp.zeros((0, 3))), "w": jnp.zeros(2)}
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert updates["t"].values.shape == (0, 3) and updates["t"].indices.shape == (0,)
    _assert_trees_equal(new_state, state)
    _assert_trees_equal(adagrad_jax.apply_updates(params, updates), params)


# ---------------------------------------------------------------------------
# row-wise accumulator
# ---------------------------------------------------------------------------


def _numpy_row_wise(params, grads_seq, lr, tau, eps, eps_root):
    """NumPy reference of the row-wise rule, in float64.

    For a RowSparse gradient the row gradient g_r sums the values of id r; a
    dense leaf's rows are its leading-axis entries. Then
    G_r += mean(g_r^2) over the row and w_r -= lr g_r / (sqrt(G_r + eps_root) + eps).
    """
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    acc = {k: np.full(v.shape[:1], tau) for k, v in params.items()}
    for grads in grads_seq:
        for name, g in grads.items():
            if isinstance(g, RowSparse):
                g = _dense(params[name].shape[0], g.indices, g.values)
            g = np.asarray(g, np.float64)
            sq = g * g
            acc[name] = acc[name] + (sq.mean(axis=tuple(range(1, g.ndim))) if g.ndim > 1 else sq)
            denom = np.sqrt(acc[name] + eps_root) + eps
            params[name] = params[name] - lr * g / denom.reshape(denom.shape + (1,) * (g.ndim - 1))
    return params, acc


def test_row_wise_matches_numpy_reference():
    # Source: NumPy reference (above). Untouched rows get g_r = 0, which changes
    # neither G nor w, so the dense NumPy formula covers the sparse rows too.
    rng = np.random.default_rng(8)
    params = {
        "t": jnp.asarray(rng.standard_normal((20, 4)), jnp.float32),
        "d": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),  # dense, row-wise too
        "b": jnp.asarray(rng.standard_normal(3), jnp.float32),  # 1-D: one entry per row
    }
    grads_seq = []
    for _ in range(4):
        ids = _ids(rng, 20, 16)
        grads_seq.append(
            {
                "t": RowSparse(
                    jnp.asarray(ids), jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
                ),
                "d": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),
                "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
            }
        )
    kwargs = {"initial_accumulator_value": 0.1, "eps": 1e-6, "eps_root": 1e-4}
    tx = adagrad_jax.sparse_adagrad(0.2, row_wise=True, **kwargs)
    new_params, state = _run(tx, params, grads_seq, adagrad_jax.apply_updates)
    acc = state[1].sum_of_squares
    assert {k: v.shape for k, v in acc.items()} == {"t": (20,), "d": (3,), "b": (3,)}
    ref_params, ref_acc = _numpy_row_wise(params, grads_seq, 0.2, 0.1, 1e-6, 1e-4)
    _assert_trees_close(new_params, ref_params, rtol=1e-5, atol=1e-6)
    _assert_trees_close(acc, ref_acc, rtol=1e-5, atol=1e-6)


def test_row_wise_init_keeps_one_float_per_row():
    tx = adagrad_jax.scale_by_sparse_adagrad(0.5, row_wise=True, accumulator_dtype=jnp.float32)
    shapes = jax.eval_shape(tx.init, {"t": jax.ShapeDtypeStruct((1000, 64), jnp.bfloat16)})
    leaf = shapes.sum_of_squares["t"]
    assert leaf.shape == (1000,) and leaf.dtype == jnp.float32


# ---------------------------------------------------------------------------
# schedules, hyperparameter injection
# ---------------------------------------------------------------------------


def test_inject_hyperparams_learning_rate_on_sparse_path():
    # Source: sparse_adagrad with the same constant learning rate. (weight_decay
    # defaults to None, which inject_hyperparams leaves static.)
    params = {"t": jnp.ones((5, 2))}
    grads = [{"t": RowSparse(jnp.array([1, 1, 4]), jnp.ones((3, 2)))}] * 2
    injected = optax.inject_hyperparams(adagrad_jax.sparse_adagrad)(learning_rate=0.25)
    plain = adagrad_jax.sparse_adagrad(0.25)
    out_injected, state = _run(injected, params, grads, adagrad_jax.apply_updates)
    out_plain, _ = _run(plain, params, grads, adagrad_jax.apply_updates)
    _assert_trees_equal(out_injected, out_plain)
    assert float(state.hyperparams["learning_rate"]) == 0.25


# ---------------------------------------------------------------------------
# value_and_row_grad and a mixed model
# ---------------------------------------------------------------------------


def test_value_and_row_grad_equals_dense_gradient():
    # Source: jax.value_and_grad of the same loss written on the tables, with
    # padding and out-of-range ids masked to zero rows by hand.
    rng = np.random.default_rng(9)
    params = {
        "user": jnp.asarray(rng.standard_normal((7, 3)), jnp.float32),
        "item": jnp.asarray(rng.standard_normal((9, 3)), jnp.float32),
        "mlp": {"w": jnp.asarray(rng.standard_normal((3,)), jnp.float32)},
    }
    user_ids = jnp.array([[1, 2, 2], [0, 6, -1]], jnp.int32)  # -1: padding
    item_ids = jnp.array([4, 4, 8, 3, 11, 4], jnp.int32)  # 8: pad_id, 11: out of range
    y = jnp.array([0.5, -1.0], jnp.float32)

    def loss_on_rows(rows, y):
        user = rows["user"].sum(axis=1)  # (2, 3)
        item = rows["item"][:2] + rows["item"][2:4] + rows["item"][4:]
        pred = (user * item) @ rows["mlp"]["w"]
        return jnp.mean((pred - y) ** 2), pred

    def lookup(table, ids, pad):
        dead = (ids < 0) | (ids >= table.shape[0]) | (ids == pad)
        safe = jnp.where(dead, 0, ids)
        return jnp.where(dead[..., None], jnp.zeros((), table.dtype), table[safe])

    def loss_on_tables(params, y):
        rows = {
            "user": lookup(params["user"], user_ids, -1),
            "item": lookup(params["item"], item_ids, 8),
            "mlp": params["mlp"],
        }
        return loss_on_rows(rows, y)

    grad_fn = jax.jit(adagrad_jax.value_and_row_grad(loss_on_rows, has_aux=True, pad_id=8))
    (loss, pred), grads = grad_fn(params, {"user": user_ids, "item": item_ids, "mlp": None}, y)
    (ref_loss, ref_pred), ref = jax.jit(jax.value_and_grad(loss_on_tables, has_aux=True))(params, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-6)
    np.testing.assert_allclose(grads["mlp"]["w"], ref["mlp"]["w"], rtol=1e-6)
    for name in ("user", "item"):
        assert isinstance(grads[name], RowSparse)
        dense = grads[name].todense(params[name].shape[0])
        np.testing.assert_allclose(dense, ref[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(grads["user"].indices, [1, 2, 2, 0, 6, -1])
    np.testing.assert_array_equal(grads["item"].indices, [4, 4, -1, 3, 11, 4])  # pad -> -1


def test_mixed_model_with_multi_transform():
    # Source: the same model trained with dense gradients (jax.grad through the
    # table lookup), optax.multi_transform({adagrad for the table, adam for the
    # dense layer}) and optax.apply_updates.
    rng = np.random.default_rng(10)
    num_rows, dim, batch, bag = 50, 4, 8, 3
    params = {
        "emb": jnp.asarray(rng.standard_normal((num_rows, dim)) * 0.1, jnp.float32),
        "dense": {
            "w": jnp.asarray(rng.standard_normal((dim,)), jnp.float32),
            "b": jnp.zeros((), jnp.float32),
        },
    }
    labels = {"emb": "table", "dense": {"w": "dense", "b": "dense"}}
    batches = [
        (
            jnp.asarray(_ids(rng, num_rows, batch * bag).reshape(batch, bag)),
            jnp.asarray(rng.standard_normal(batch), jnp.float32),
        )
        for _ in range(5)
    ]

    def loss_on_rows(rows, y):
        pooled = rows["emb"].mean(axis=1)
        pred = pooled @ rows["dense"]["w"] + rows["dense"]["b"]
        return jnp.mean((pred - y) ** 2)

    # (optax.adam mixes float and int32 in its bias correction, which the strict
    # promotion of this suite rejects; momentum SGD is as stateful.)
    dense_opt = optax.sgd(0.05, momentum=0.9)
    sparse_tx = optax.multi_transform(
        {"table": adagrad_jax.sparse_adagrad(0.5), "dense": dense_opt}, labels
    )
    grad_fn = adagrad_jax.value_and_row_grad(loss_on_rows)

    @jax.jit
    def sparse_step(params, state, ids, y):
        loss, grads = grad_fn(params, {"emb": ids, "dense": None}, y)
        updates, state = sparse_tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state, loss

    dense_tx = optax.multi_transform(
        {"table": adagrad_jax.adagrad(0.5), "dense": dense_opt}, labels
    )

    @jax.jit
    def dense_step(params, state, ids, y):
        def loss_fn(p):
            return loss_on_rows({"emb": p["emb"][ids], "dense": p["dense"]}, y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = dense_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    sparse_params, sparse_state = params, sparse_tx.init(params)
    dense_params, dense_state = params, dense_tx.init(params)
    for ids, y in batches:
        sparse_params, sparse_state, loss = sparse_step(sparse_params, sparse_state, ids, y)
        dense_params, dense_state, dense_loss = dense_step(dense_params, dense_state, ids, y)
        np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
    _assert_trees_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    _assert_trees_close(sparse_state, dense_state, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# misuse gives clear errors
# ---------------------------------------------------------------------------


def _sparse_grads():
    return {"t": RowSparse(jnp.array([1, 2]), jnp.ones((2, 3)))}


def test_plain_leafwise_transforms_refuse_row_sparse():
    # optax.scale_by_schedule casts the step size to each leaf's dtype: on the
    # int32 ids it would silently turn lr = 0.01 into 0 and send every update
    # to row 0. The guard leaf makes it, and every leaf-wise map, fail instead.
    params = {"t": jnp.zeros((4, 3))}
    schedule = optax.constant_schedule(0.01)
    for tx in (
        optax.chain(adagrad_jax.scale_by_sparse_adagrad(), optax.scale_by_learning_rate(schedule)),
        optax.chain(adagrad_jax.scale_by_sparse_adagrad(), optax.scale(-0.01)),
        optax.chain(optax.clip(1.0), adagrad_jax.sparse_adagrad()),
        optax.sgd(0.1),
    ):
        with pytest.raises(TypeError, match="RowSparse guard: this transform does not support"):
            tx.update(_sparse_grads(), tx.init(params), params)
    # Norms fail inside jnp.real, whose message cannot name the guard.
    tx = optax.chain(optax.clip_by_global_norm(1.0), adagrad_jax.sparse_adagrad())
    with pytest.raises(NotImplementedError):
        tx.update(_sparse_grads(), tx.init(params), params)
    # Wrapped in on_row_values, the same transforms see the values only.
    tx = optax.chain(
        adagrad_jax.scale_by_sparse_adagrad(),
        adagrad_jax.on_row_values(optax.scale_by_learning_rate(schedule)),
    )
    updates, _ = tx.update(_sparse_grads(), tx.init(params), params)
    np.testing.assert_array_equal(updates["t"].indices[:2], [1, 2])
    np.testing.assert_allclose(updates["t"].values[:2], np.full((2, 3), -0.01), rtol=1e-6)


def test_optax_apply_updates_refuses_row_sparse():
    with pytest.raises(TypeError, match="adagrad_jax.apply_updates"):
        optax.apply_updates({"t": jnp.zeros((4, 3))}, _sparse_grads())


@pytest.mark.parametrize(
    "tx, message",
    [(optax.adam(0.1), "RowSparse"), (optax.adagrad(0.1), "RowSparse")],
    ids=["optax.adam", "optax.adagrad"],
)
def test_stateful_dense_optimizers_refuse_row_sparse(tx, message):
    # optax names the RowSparse type at the path.
    params = {"t": jnp.zeros((4, 3))}
    with pytest.raises(ValueError, match=message) as info:
        tx.update(_sparse_grads(), tx.init(params), params)
    assert "['t']" in str(info.value)


def test_adagrad_takes_row_sparse_gradients_like_sparse_adagrad():
    # One rule across the package: every diagonal optimizer takes RowSparse in
    # its own constructor; sparse_adagrad is adagrad's v0.1 name.
    params = {"t": jnp.zeros((4, 3)), "w": jnp.ones(2)}
    grads = {"t": RowSparse(jnp.array([1, 3, 1]), jnp.ones((3, 3))), "w": jnp.ones(2)}
    results = []
    for tx in (adagrad_jax.adagrad(0.1, pad_id=3), adagrad_jax.sparse_adagrad(0.1, pad_id=3)):
        u, state = tx.update(grads, tx.init(params), params)
        results.append((adagrad_jax.apply_updates(params, u), state))
    _assert_trees_equal(results[0], results[1])
    np.testing.assert_allclose(results[0][0]["t"][:, 0], [0.0, -0.1, 0.0, 0.0], rtol=1e-6)


def test_indices_changed_by_a_transform_are_reported_with_their_path():
    leaves, treedef = jax.tree.flatten({"t": RowSparse(jnp.array([0]), jnp.ones((1, 3)))})
    guard = leaves[0]
    broken = jax.tree.unflatten(treedef, [guard, jnp.array([1.0, 2.0]), jnp.ones((2, 3))])
    params = {"t": jnp.zeros((4, 3))}
    with pytest.raises(TypeError, match=re.escape("apply_updates: updates['t'] is a RowSparse")):
        adagrad_jax.apply_updates(params, broken)
    tx = adagrad_jax.scale_by_sparse_adagrad()
    with pytest.raises(TypeError, match=re.escape("updates['t'] is a RowSparse whose indices")):
        tx.update(broken, tx.init(params))


def test_mismatched_rows_and_trees_are_reported_with_their_path():
    params = {"t": jnp.zeros((4, 2))}
    tx = adagrad_jax.sparse_adagrad()
    message = re.escape("updates['t'] is a RowSparse with values float32[2,3]")
    with pytest.raises(ValueError, match=message):
        tx.update(_sparse_grads(), tx.init(params), params)
    with pytest.raises(ValueError, match=re.escape("updates['t'] is a RowSparse with values")):
        adagrad_jax.apply_updates(params, _sparse_grads())
    with pytest.raises(ValueError, match=re.escape("apply_updates: the tree of updates differs")):
        adagrad_jax.apply_updates({"u": jnp.zeros((4, 3))}, _sparse_grads())


def test_weight_decay_refuses_row_sparse_leaves():
    params = {"t": jnp.zeros((4, 3))}
    tx = adagrad_jax.sparse_adagrad(weight_decay=0.1)
    message = re.escape("sparse_adagrad(weight_decay=0.1): updates['t']")
    with pytest.raises(ValueError, match=message):
        tx.update(_sparse_grads(), tx.init(params), params)
    # A traced weight decay cannot be proven 0, so it is refused as well.
    tx = optax.inject_hyperparams(adagrad_jax.sparse_adagrad)(weight_decay=0.0)
    with pytest.raises(ValueError, match="RowSparse gradient, but coupled weight decay"):
        jax.jit(tx.update)(_sparse_grads(), tx.init(params), params)
    # None and a Python 0 mean no decay.
    for wd in (None, 0):
        tx = adagrad_jax.sparse_adagrad(weight_decay=wd)
        tx.update(_sparse_grads(), tx.init(params), params)


def test_on_row_values_refuses_per_coordinate_state():
    with pytest.raises(ValueError, match="per-coordinate state"):
        adagrad_jax.on_row_values(optax.adam(0.1)).init({"t": jnp.zeros((4, 3))})


def test_row_sparse_refuses_arithmetic_and_mutation():
    g = RowSparse(jnp.array([0]), jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="does not support arithmetic"):
        g * 2.0
    with pytest.raises(TypeError, match="does not support arithmetic"):
        np.asarray(g)
    with pytest.raises(AttributeError, match="immutable"):
        g.values = jnp.zeros((1, 2))
    assert repr(g).startswith("RowSparse(indices=Array([0]")


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"pad_id": -3}, ValueError, "sparse_adagrad(pad_id=-3): pad_id must be a row id"),
        ({"pad_id": 1.5}, TypeError, "sparse_adagrad(pad_id=1.5): pad_id must be an integer"),
        ({"row_wise": 1}, TypeError, "sparse_adagrad(row_wise=1): row_wise must be True or False"),
        (
            {"out_of_range": "clip"},
            ValueError,
            "sparse_adagrad(out_of_range='clip'): out_of_range must be",
        ),
        ({"eps": -1.0}, ValueError, "sparse_adagrad(eps=-1.0): eps must be finite and >= 0"),
        ({"learning_rate": "fast"}, TypeError, "sparse_adagrad(learning_rate='fast')"),
        ({"padid": 0}, TypeError, "Did you mean 'pad_id'?"),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        adagrad_jax.sparse_adagrad(**kwargs)


@pytest.mark.parametrize(
    "indices, values, error, message",
    [
        (
            jnp.array([1.0]),
            jnp.ones((1, 2)),
            TypeError,
            "RowSparse(indices=float32[1]): indices must be an integer",
        ),
        (jnp.zeros((2, 2), jnp.int32), jnp.ones((2, 2)), ValueError, "indices must be 1-D"),
        (jnp.array([1]), jnp.ones((1, 2), jnp.int32), TypeError, "RowSparse(values=int32[1,2])"),
        (
            jnp.array([1, 2]),
            jnp.ones((3, 2)),
            ValueError,
            "values must have one row per id, i.e. shape (2, ...)",
        ),
    ],
)
def test_invalid_row_sparse(indices, values, error, message):
    with pytest.raises(error, match=re.escape(message)):
        RowSparse(indices, values)


def test_value_and_row_grad_argument_errors():
    with pytest.raises(TypeError, match=re.escape("value_and_row_grad(has_aux=1)")):
        adagrad_jax.value_and_row_grad(lambda r: 0.0, has_aux=1)
    grad_fn = adagrad_jax.value_and_row_grad(lambda rows: jnp.sum(rows["t"]))
    params = {"t": jnp.zeros((3, 2)), "s": jnp.zeros(())}
    with pytest.raises(TypeError, match=re.escape("ids['t'] is float32[2]; ids must be integers")):
        grad_fn(params, {"t": jnp.array([0.0, 1.0]), "s": None})
    with pytest.raises(ValueError, match=re.escape("ids['s'] is an id array, but params['s']")):
        grad_fn(params, {"t": None, "s": jnp.array([0])})
    with pytest.raises(ValueError, match="ids must mirror params"):
        grad_fn(params, {"t": jnp.array([0])})


def test_row_wise_checks_row_shape_against_params():
    """Row-wise state has no row shape: with params given, a wrong row shape is
    caught in update (not only later in apply_updates)."""
    tx = adagrad_jax.sparse_adagrad(0.1, row_wise=True)
    params = {"emb": jnp.zeros((4, 3))}
    state = tx.init(params)
    bad = {"emb": adagrad_jax.RowSparse(jnp.array([1]), jnp.ones((1, 7)))}
    with pytest.raises(ValueError, match=r"table's rows have shape \(3,\)"):
        tx.update(bad, state, params)
    good = {"emb": adagrad_jax.RowSparse(jnp.array([1]), jnp.ones((1, 3)))}
    u, _ = tx.update(good, state, params)
    np.testing.assert_allclose(u["emb"].values[0], -0.1 / (1 + 1e-8) * np.ones(3), rtol=1e-6)
