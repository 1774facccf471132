"""Applying and transforming row-sparse updates: `apply_updates`, `on_row_values`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import placement, trees
from adagrad_jax._src.tables.ids import as_int32_ids, check_row_count, clean_ids, dedup
from adagrad_jax._src.tables.row_sparse import (
    RowSparse,
    check_row_sparse,
    is_row_sparse,
    path_name,
    values_view,
)


def on_row_values(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs a stateless optax transform on the values of `RowSparse` updates.

    ``inner`` sees the updates with each `RowSparse` replaced by its values
    (shape (k, ...)); the row ids are put back afterwards. Dense leaves pass to
    ``inner`` unchanged. Use it for transforms that act element by element or
    on the whole update and keep no per-coordinate state: ``optax.scale``,
    ``optax.scale_by_learning_rate`` (constant or schedule),
    ``optax.scale_by_schedule``, ``optax.clip``,
    ``optax.clip_by_global_norm``, ``optax.normalize_by_update_norm``.

    A global norm sees the values as they are. After the Adagrad stage
    (``optax.chain(adagrad_jax.scale_by_adagrad(),
    on_row_values(optax.clip_by_global_norm(c)), ...)``) each distinct id
    holds one row and dropped ids hold zeros, so the norm is the dense
    update's norm. On a gradient (before the Adagrad stage) an id looked up
    twice, with rows a and b, counts as ``|a|^2 + |b|^2`` where the dense
    gradient has ``|a + b|^2``, and padding or out-of-range ids count too:
    the clip then differs from the dense one.

    Args:
      inner: an `optax.GradientTransformation` whose state holds scalars only.

    Returns:
      An `optax.GradientTransformation` with ``inner``'s state.

    Raises:
      ValueError: at ``init`` if ``inner``'s state holds an array of rank >= 1
        (such state would be indexed by table row, while the values it would
        meet are indexed by touched row).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> tx = adagrad_jax.on_row_values(optax.scale(-0.5))
      >>> g = adagrad_jax.RowSparse(jnp.array([7]), jnp.array([[2.0, 4.0]]))
      >>> u, _ = tx.update(g, tx.init(None))
      >>> u.indices, u.values
      (Array([7], dtype=int32), Array([[-1., -2.]], dtype=float32))
    """

    def init_fn(params):
        shapes = jax.eval_shape(inner.init, params)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
            if getattr(leaf, "ndim", 0) >= 1:
                raise ValueError(
                    f"on_row_values(inner): inner keeps per-coordinate state"
                    f" (state{jax.tree_util.keystr(path)} has shape {leaf.shape});"
                    " only transforms with scalar state (scale,"
                    " scale_by_learning_rate, scale_by_schedule, clip) can run on"
                    " row values."
                )
        return inner.init(params)

    def update_fn(updates, state, params=None):
        new_values, state = inner.update(values_view(updates), state, params)
        updates = jax.tree.map(
            lambda u, v: RowSparse(u.indices, v) if is_row_sparse(u) else v,
            updates,
            new_values,
            is_leaf=is_row_sparse,
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _add(table: jax.Array, ids: jax.Array, values: jax.Array) -> jax.Array:
    return table.at[ids].add(values.astype(table.dtype), mode="drop")


def _add_rounded_once(table: jax.Array, ids: jax.Array, values: jax.Array) -> jax.Array:
    """Rows plus values wider than the table, summed in the wider dtype and rounded once.

    The values of repeated ids are summed first (`dedup`), then each touched
    row is read, added to in the values' dtype, rounded to the table's and
    written back.
    """
    num_rows = table.shape[0]
    rows, slot = dedup(jnp.minimum(ids, num_rows), num_rows)
    summed = jax.ops.segment_sum(values, slot, num_segments=ids.shape[0])
    old = table.at[rows].get(mode="fill", fill_value=0, unique_indices=True)
    new = (old.astype(values.dtype) + summed).astype(table.dtype)
    return table.at[rows].set(new, mode="drop", unique_indices=True)


def apply_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
    """`optax.apply_updates` that also scatters `RowSparse` updates into tables.

    A dense leaf becomes ``(p + u).astype(p.dtype)``, as in optax (the sum
    taken in the wider of the two dtypes, also under strict dtype promotion). A RowSparse
    update adds ``values[i]`` to row ``indices[i]`` of its table (duplicates
    add up; the values are cast to the table's dtype); negative ids and ids
    >= the table's row count are dropped. Values in a wider dtype than the
    table (the float32 updates of a bfloat16 table under
    ``stochastic_rounding=True``) are added in their dtype, duplicates summed
    first, and each row is rounded once to the table's dtype, as a dense
    leaf is. Under ``jax.jit(step,
    donate_argnums=...)`` with the parameters donated, XLA writes the rows into
    the donated table in place, so no table-sized buffer is allocated.

    Args:
      params: a tree of parameters.
      updates: a tree of the same structure, with a `RowSparse` or an array
        where a parameter is an array.

    Returns:
      The updated parameters, with the structure, shapes and dtypes of `params`.

    Raises:
      ValueError: if the trees differ (naming the first differing path) or a
        RowSparse's rows do not match its table.
      TypeError: if a RowSparse's indices are not integers.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> params = {"table": jnp.zeros((3, 2)), "b": jnp.ones(2)}
      >>> updates = {"table": adagrad_jax.RowSparse(jnp.array([2, 9]), jnp.ones((2, 2))),
      ...            "b": jnp.array([0.5, 0.5])}
      >>> new = adagrad_jax.apply_updates(params, updates)
      >>> new["table"]      # id 9 is out of range: dropped
      Array([[0., 0.],
             [0., 0.],
             [1., 1.]], dtype=float32)
    """
    caller = "apply_updates"
    trees.check_same_structure(caller, "updates", values_view(updates), "params", params)

    def leaf(path, p, u):
        if p is None:
            return None
        if not is_row_sparse(u):
            if hasattr(u, "dtype") and hasattr(p, "dtype") and u.dtype != p.dtype:
                # Wider updates (stochastic rounding's float32 for bfloat16 weights) are
                # added in the wider dtype, explicitly, so strict promotion accepts them.
                with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
                    wide = jnp.promote_types(u.dtype, p.dtype)
                return (p.astype(wide) + u.astype(wide)).astype(p.dtype)
            return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
        where = path_name(path)
        if jnp.ndim(p) < 1:
            raise ValueError(
                f"{caller}: {where} is a RowSparse but its parameter is a scalar;"
                " only tables (arrays with a row axis) take row updates."
            )
        check_row_sparse(caller, where, u, jnp.shape(p)[1:])
        num_rows = jnp.shape(p)[0]
        check_row_count(caller, where, num_rows, u.indices.shape[0])
        ids = clean_ids(as_int32_ids(u.indices), num_rows)
        with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
            wider = jnp.promote_types(u.values.dtype, p.dtype) != jnp.dtype(p.dtype)
        # On an Explicit mesh: a masked scatter into each row shard, in place.
        return placement.partitioned(
            _add_rounded_once if wider else _add,
            (p, ids, u.values),
            placement.spec_of(p, jnp.ndim(p)),
            like=(p, ids, u.values),
        )

    return jax.tree_util.tree_map_with_path(leaf, params, updates, is_leaf=lambda x: x is None)
