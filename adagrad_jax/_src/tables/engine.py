"""One optimizer rule, applied to dense leaves and to the touched rows of tables.

Every optimizer of the package that takes `RowSparse` gradients is written as
a *leaf rule*::

    rule(g, slots, w) -> (u, new_slots)
    rule(g, slots, w, rounder) -> (u, new_slots)      (with ``rounding=``)

where ``g`` is a gradient (a whole dense leaf, or the deduplicated rows of a
table's gradient, shape (k, ...)), ``slots`` the optimizer's per-parameter
state arrays at the same entries (accumulators, gradient sums, ...), ``w`` the
parameter values there (None for rules that do not read them), ``u`` the
update and ``new_slots`` the new state values (for the first
``len(new_slots)`` slots; any further slots are read-only and are neither
written nor scattered). A rule is elementwise along the row axis: row i of its
outputs depends on row i of its inputs only. With ``rounding=`` (stochastic
rounding of low-precision state) the rule also gets a `core.rounding.Rounder`
for its entries, keyed by the leaf and the rows' ids, and rounds the state it
writes with it (`core.rounding.round_sum`).

`map_rule` applies a rule to every leaf of a gradient tree. A dense leaf goes
through as it is. For a `RowSparse` leaf of a table with V rows it:

1. turns the ids into int32 and marks padding (negative ids, ``pad_id``) and
   ids >= V as dead (``out_of_range="error"`` reports the first of the latter);
2. deduplicates the live ids (`dedup`: fixed size, no sort) and sums the
   values of each id, in the wider of the gradient's and the state's dtypes,
   rounded once to the gradient's dtype;
   With ``unique_rows=U`` the distinct live ids are compacted into U
   entries (in order of first appearance) and the sum goes straight into
   them; every later step runs over U rows, not k;
3. gathers the touched rows of every slot (and of the parameter), runs the
   rule on them, scatters the new slot rows back and returns
   ``RowSparse(rows, u)``, with u = 0 in the dead entries.

So a step reads and writes only the touched rows: O(k * D) for k ids, in
place under `jax.jit` with the parameters and state donated. Rows that no id
touches keep their state and get no update ("lazy" semantics, as in
TensorFlow's and Keras' sparse kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from adagrad_jax._src.core import nonfinite_policy, placement, quantized, runtime, trees
from adagrad_jax._src.core.numerics import per_row
from adagrad_jax._src.core.rounding import Rounder, RoundingKey
from adagrad_jax._src.tables.ids import as_int32_ids, check_row_count, dedup
from adagrad_jax._src.tables.row_sparse import (
    RowSparse,
    check_gradient_dtypes,
    check_row_sparse,
    is_row_sparse,
    path_name,
    values_view,
)

Rule = Callable[..., tuple[jax.Array, tuple]]


def _check_placement(caller, where, state_where, p, slot, row_wise, stacked):
    """Trace-time checks of a table's sharding on an Explicit mesh (types carry it).

    The state must be sharded like its parameter (row-wise state like the
    parameter's row axis; stacked slots with their slot axis unsplit), and a
    row-sharded table's rows must divide evenly over the mesh axes that split
    them.
    """
    table = slot if p is None else p
    sharding = placement.typed_sharding(table)
    if sharding is not None and table.ndim >= 1 and sharding.spec and sharding.spec[0]:
        axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
        parts = 1
        for axis in axes:
            parts *= sharding.mesh.shape[axis]
        if table.shape[0] % parts:
            raise ValueError(
                f"{caller}: {where}'s table has {table.shape[0]} rows, sharded over mesh"
                f" axes {axes} of {parts} devices; the rows must divide evenly. Pad the"
                f" table to {-(-table.shape[0] // parts) * parts} rows (ids never reach"
                " the padding rows) or replicate it."
            )
    if p is None:
        return
    expected = placement.spec_of(p, 1 if row_wise else jnp.ndim(p))
    if stacked:
        expected = jax.sharding.PartitionSpec(*expected, None)
    actual = placement.spec_of(slot, jnp.ndim(slot))
    if (placement.typed_sharding(p) is not None or placement.typed_sharding(slot) is not None) and (
        tuple(expected) != tuple(actual)
    ):
        raise ValueError(
            f"{caller}: {state_where} is sharded {actual} but its parameter"
            f" params{where[len('updates') :]} is sharded {expected}"
            f"{' (row-wise: the row axis)' if row_wise else ''}; optimizer state must be"
            " placed like its parameters. Build it with jax.jit(tx.init)(params) or"
            " with out_shardings=adagrad_jax.state_shardings(tx, params)."
        )


def _live_ids(caller, where, g, num_rows, *, pad_id, out_of_range):
    """int32 ids of `g` with padding and out-of-range ids replaced by `num_rows`.

    With ``out_of_range="error"`` an id >= `num_rows` that is not padding
    raises (`runtime.error_if`: eagerly at once, under `jax.jit` when the
    step runs), naming the id as given (int64 and uint32 ids unclipped), its
    position and the leaf.
    """
    k = g.indices.shape[0]
    ids = as_int32_ids(g.indices)
    padding = ids < 0
    if pad_id is not None:
        padding = padding | (ids == jnp.asarray(pad_id).astype(jnp.int32))
    too_big = (ids >= num_rows) & ~padding
    if out_of_range == "error" and k:
        # Reductions rather than g.indices[position]: a dynamic index into ids
        # sharded over a mesh fails to trace on Explicit meshes.
        position = jnp.argmax(too_big).astype(jnp.int32)  # int64 under x64
        first_bad = jnp.max(
            jnp.where(lax.iota(jnp.int32, k) == position, g.indices, jnp.zeros((), g.indices.dtype))
        )
        safe_where = where.replace("{", "{{").replace("}", "}}")
        valid = f"ids 0 to {num_rows - 1}" if num_rows else "no id is valid"
        runtime.error_if(
            jnp.any(too_big),
            f"{caller}(out_of_range='error'): {safe_where} holds row id {{}} at position {{}},"
            f" but the table has {num_rows} rows ({valid}; negative ids"
            f"{'' if pad_id is None else ' and pad_id'} are padding). Fix the ids, or pass"
            " out_of_range='drop' to skip such ids.",
            first_bad,
            position,
        )
    return jnp.where(padding | too_big, num_rows, ids)


def _rows_update(
    caller, where, rule, g, slots, param, *, pad_id, out_of_range, unique_rows, rounder
):
    """Runs `rule` on the touched rows of one table; see the module docstring.

    Dedup and sum (`row_gradient`), gather, rule, scatter. Dead entries read
    stand-in state of 1 and parameters of 0, so that no rule divides 0 by 0
    there; their writes are dropped and their updates zeroed. `rounder` (a
    function of the rows' ids) makes the rule's `Rounder`, or is None.
    """
    num_rows = slots[0].shape[0]
    rows, summed = row_gradient(
        caller,
        where,
        g,
        num_rows,
        slots[0].dtype,
        pad_id=pad_id,
        out_of_range=out_of_range,
        unique_rows=unique_rows,
    )
    if g.indices.shape[0] == 0 or num_rows == 0:  # Nothing to gather.
        return RowSparse(rows, summed), tuple(slots)
    like = (*slots, rows, summed)
    slot_rows = tuple(_gather_slot(s, rows, like) for s in slots)
    w_rows = None if param is None else gather_rows(param, rows, 0, like)
    extra = () if rounder is None else (rounder(rows),)
    u, new_slot_rows = rule(summed, slot_rows, w_rows, *extra)
    new_slots = tuple(_scatter_slot(s, rows, r, like) for s, r in zip(slots, new_slot_rows))
    live = per_row(rows < num_rows, u.ndim)
    return RowSparse(rows, jnp.where(live, u, jnp.zeros((), u.dtype))), new_slots + tuple(
        slots[len(new_slot_rows) :]
    )


def row_gradient(
    caller: str,
    where: str,
    g: RowSparse,
    num_rows: int,
    state_dtype: Any,
    *,
    pad_id: Any,
    out_of_range: str,
    unique_rows: int | None,
) -> tuple[jax.Array, jax.Array]:
    """A table's `RowSparse` gradient as (rows, summed): one entry per distinct live id.

    The ids are checked and made live (`_live_ids`: padding and out-of-range
    ids dead), deduplicated (`dedup`) and compacted into the first entries of
    ``bound = min(unique_rows or k, k)`` rows, in order of first appearance;
    ``summed[j]`` is the sum of the values of id ``rows[j]``, taken in the
    wider of the gradient's and `state_dtype` and rounded once to the
    gradient's dtype (the row gradient a dense gradient of the same lookups
    would hold), 0 in dead entries (``rows[j] >= num_rows``). More than
    `bound` distinct ids: every entry is dead and the step raises
    (`runtime.error_if`), so nothing is written.

    On an Explicit mesh the deduplication runs under `placement.partitioned`;
    `rows` and `summed` are placed like the ids.
    """
    k = g.indices.shape[0]
    check_row_count(caller, where, num_rows, k)
    ids = _live_ids(caller, where, g, num_rows, pad_id=pad_id, out_of_range=out_of_range)
    bound = k if unique_rows is None else min(unique_rows, k)
    values = g.values
    if k == 0 or num_rows == 0:  # No live id (a 0-row table has no rows).
        return ids[:bound], jnp.zeros_like(values[:bound])
    with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
        compute_dtype = jnp.promote_types(values.dtype, state_dtype)

    def dedup_and_sum(ids, values):
        rows, slot = dedup(ids, num_rows)
        first = rows < num_rows  # the first position of each distinct live id
        count = jnp.sum(first, dtype=jnp.int32)
        if bound == k:
            segment = slot
        else:
            # Entry j of the compacted rows holds the (j+1)-th distinct id; all
            # entries are dead (distinct ids >= num_rows) when they overflow.
            position = jnp.cumsum(first, dtype=jnp.int32) - 1
            target = jnp.where(first & (count <= bound), position, bound)
            rows = (
                (num_rows + lax.iota(jnp.int32, bound))
                .at[target]
                .set(rows, mode="drop", unique_indices=True)
            )
            segment = jnp.where(ids < num_rows, position.at[slot].get(), bound)
        summed = jax.ops.segment_sum(values.astype(compute_dtype), segment, num_segments=bound)
        return rows, summed, count

    rows, summed, count = placement.partitioned(
        dedup_and_sum,
        (ids, values),
        (
            placement.spec_of(ids, 1),
            placement.rows_spec(ids, values.ndim),
            jax.sharding.PartitionSpec(),
        ),
        like=(ids, values),
    )
    if bound < k:
        safe_where = where.replace("{", "{{").replace("}", "}}")
        runtime.error_if(
            count > bound,
            f"{caller}(unique_rows={unique_rows}): {safe_where} holds {{}} distinct row ids,"
            f" more than unique_rows={unique_rows}; no row was updated. Raise unique_rows"
            f" (at most the {k} ids of the step) or pass unique_rows=None (no bound).",
            count,
        )
    live = per_row(rows < num_rows, values.ndim)
    return rows, jnp.where(live, summed.astype(values.dtype), jnp.zeros((), values.dtype))


def _gather_slot(slot: Any, rows: jax.Array, like: tuple) -> Any:
    """A state slot's rows (each array of an 8-bit accumulator's codes and scales alike:
    its blocks lie within rows); dead entries read a stand-in value of 1."""
    return jax.tree.map(lambda a: gather_rows(a, rows, 1, like), slot)


def _scatter_slot(slot: Any, rows: jax.Array, new_rows: Any, like: tuple) -> Any:
    return jax.tree.map(lambda a, r: scatter_rows(a, rows, r, like), slot, new_rows)


def gather_rows(table: jax.Array, rows: jax.Array, fill: Any, like: tuple) -> jax.Array:
    """``table[rows]`` for distinct row ids, `fill` where an id is out of range.

    On an Explicit mesh each device reads only the rows it owns
    (`placement.partitioned`); the result is placed like `rows`. `like` lists
    the arrays whose mesh the gather runs on.
    """
    return placement.partitioned(
        lambda t, r: t.at[r].get(mode="fill", fill_value=fill, unique_indices=True),
        (table, rows),
        placement.rows_spec(rows, table.ndim),
        like=like,
    )


def scatter_rows(table: jax.Array, rows: jax.Array, new_rows: jax.Array, like: tuple) -> jax.Array:
    """`table` with its rows `rows` (distinct ids; out-of-range ones dropped) set to `new_rows`.

    In place under a donated `jax.jit`; on an Explicit mesh each device writes
    only the rows it owns and the result is placed like `table`.
    """
    return placement.partitioned(
        lambda t, r, v: t.at[r].set(v, mode="drop", unique_indices=True),
        (table, rows, new_rows),
        placement.spec_of(table, table.ndim),
        like=like,
    )


def _check_dense_shape(caller, where, shape, expected, what):
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{caller}: {where} has shape {tuple(shape)} but {what} has shape"
            f" {tuple(expected)}. Pass a gradient of the parameter's shape (or a"
            " RowSparse of its rows, for a table)."
        )


def map_rule(
    caller: str,
    rule: Rule,
    updates: Any,
    slots: Sequence[Any],
    params: Any = None,
    *,
    read_params: bool = False,
    row_wise: bool = False,
    pad_id: Any = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    state_name: str = "state",
    stacked: bool = False,
    rounding: RoundingKey | None = None,
) -> tuple[Any, tuple]:
    """Applies `rule` to every leaf of `updates`; returns (updates, new slot trees).

    Args:
      caller: the public function's name, for error messages.
      rule: ``rule(g, slots, w) -> (u, new_slots)`` (module docstring).
      updates: a tree of gradients: arrays, `RowSparse` at tables, or None.
      slots: trees with the structure of the parameters (the optimizer's
        per-parameter state); the first one fixes each leaf's expected shape.
      params: the parameters, or None.
      read_params: whether `rule` reads ``w``; if so, `params` is required.
      row_wise: whether the slots hold one entry per row (shape ``p.shape[:1]``)
        instead of one per coordinate.
      pad_id, out_of_range: the id rules of `RowSparse` leaves.
      unique_rows: None, or the most distinct live ids a `RowSparse` leaf may
        hold: its touched rows are compacted into that many entries (the
        gathers, the rule, the scatters and the returned update are that size),
        and a step with more raises (`runtime.error_if`) and updates no row.
      nonfinite: "propagate" (the rule as written), "skip_coordinate" or
        "skip_step" (`nonfinite_policy.skipping_rule`): where the diagonal
        family applies the policy, to summed rows. "propagate" adds no operation.
      state_name: how messages name the first slot tree.
      stacked: whether each leaf of ``slots[0]`` holds several slots on a last
        axis (`core.slots.stack_slots`): a leaf's shape is then its
        parameter's plus that axis, the rule reads and writes the stacked
        rows, and a table row's whole state moves in one gather and one
        scatter.
      rounding: None, or the step's `RoundingKey`: the rule is then called
        with a fourth argument, the `Rounder` of the leaf (or of the touched
        rows, keyed by their ids), to round low-precision state stochastically.

    Raises:
      ValueError: for trees that differ from the state's, gradients whose shape
        differs from their parameter's, RowSparse rows that do not fit their
        table, or `params` missing when the rule reads them (each naming the
        path).
    """
    # An 8-bit accumulator (codes and scales) stands for one parameter leaf.
    state_view = jax.tree.map(
        lambda x: x.codes if quantized.is_int8(x) else x, slots[0], is_leaf=quantized.is_int8
    )
    trees.check_same_structure(caller, "updates", values_view(updates), state_name, state_view)
    check_gradient_dtypes(caller, updates)
    if read_params and params is None:
        raise ValueError(
            f"{caller}: update(updates, state, params) needs params: this rule reads the"
            " current parameter values. Pass them as the third argument (as"
            " optax.adamw needs them)."
        )
    if row_wise and params is None:
        raise ValueError(
            f"{caller}(row_wise=True): update(updates, state, params) needs params: the"
            " row-wise state keeps one number per row and does not record the width of"
            " the rows, so the gradients' row shapes are checked against params (before"
            " any state changes). Pass params as the third argument."
        )
    # "skip_step" judges the whole step's gradients; the other policies read each leaf only.
    step_ok = nonfinite_policy.all_finite(updates) if nonfinite == "skip_step" else None
    rule_fn = nonfinite_policy.skipping_rule(
        rule, nonfinite, row_wise=row_wise, step_ok=step_ok, stacked=stacked
    )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_row_sparse)
    slot_leaves = [treedef.flatten_up_to(tree) for tree in slots]  # type: ignore[attr-defined]
    if params is not None:
        trees.check_same_structure(caller, "params", params, state_name, state_view)
        param_leaves = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
    else:
        param_leaves = [None] * len(leaves)

    new_updates: list[Any] = []
    new_slots: list[list[Any]] = [[] for _ in slots]
    for i, ((path, g), p) in enumerate(zip(leaves, param_leaves)):
        where = path_name(path)
        state_where = state_name + jax.tree_util.keystr(path)
        leaf_slots = tuple(s[i] for s in slot_leaves)
        first = leaf_slots[0]
        shape = first.shape[:-1] if stacked else first.shape  # the parameter's (its rows')
        w = p if read_params else None

        def rounder(rows, i=i):
            return Rounder(rounding, i, rows)

        if is_row_sparse(g):
            if len(shape) < 1:
                raise ValueError(
                    f"{caller}: {where} is a RowSparse but its parameter is a scalar;"
                    " only tables (arrays with a row axis) take row gradients."
                )
            if p is not None:
                _check_dense_shape(
                    caller,
                    f"params{jax.tree_util.keystr(path)}",
                    jnp.shape(p)[:1] if row_wise else jnp.shape(p),
                    shape,
                    state_where,
                )
            placed = first.codes if quantized.is_int8(first) else first
            _check_placement(caller, where, state_where, p, placed, row_wise, stacked)
            row_shape = (None if p is None else jnp.shape(p)[1:]) if row_wise else shape[1:]
            check_row_sparse(caller, where, g, row_shape)
            u, leaf_slots = _rows_update(
                caller,
                where,
                rule_fn,
                g,
                leaf_slots,
                w,
                pad_id=pad_id,
                out_of_range=out_of_range,
                unique_rows=unique_rows,
                rounder=None if rounding is None else rounder,
            )
        else:
            if not hasattr(g, "shape") or not hasattr(g, "dtype"):
                g = jnp.asarray(g)  # A Python float: float32 (integers were refused above).
            if row_wise:
                _check_dense_shape(
                    caller, where, g.shape, jnp.shape(p), f"params{jax.tree_util.keystr(path)}"
                )
                _check_dense_shape(
                    caller,
                    f"{where}'s row count",
                    jnp.shape(g)[:1],
                    shape,
                    f"the row-wise {state_where}",
                )
            else:
                _check_dense_shape(caller, where, g.shape, shape, state_where)
            if w is not None:
                _check_dense_shape(
                    caller, f"params{jax.tree_util.keystr(path)}", jnp.shape(w), g.shape, where
                )
            extra = () if rounding is None else (rounder(None),)
            u, new_leaf_slots = rule_fn(g, leaf_slots, w, *extra)
            leaf_slots = tuple(new_leaf_slots) + leaf_slots[len(new_leaf_slots) :]
        new_updates.append(u)
        for acc, s in zip(new_slots, leaf_slots):
            acc.append(s)
    return (
        jax.tree.unflatten(treedef, new_updates),
        tuple(jax.tree.unflatten(treedef, s) for s in new_slots),
    )
