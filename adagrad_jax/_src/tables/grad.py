"""`value_and_row_grad`: row gradients of a loss without a dense table gradient."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adagrad_jax._src.core import placement
from adagrad_jax._src.tables.ids import as_int32_ids, check_pad_id, check_row_count
from adagrad_jax._src.tables.row_sparse import RowSparse, as_array, describe_array, is_index_dtype


def _gradient_ids(given: jax.Array, ids32: jax.Array) -> jax.Array:
    """The ids a gradient carries: int32, or the given ids unclipped where int32 cannot hold them.

    int64, uint32 and uint64 ids stay exact (as int64) when JAX has 64-bit
    integers (``jax_enable_x64``), so that ``out_of_range="error"`` reports the
    id the caller passed; a uint64 id beyond 2**63 shows as 2**63 - 1. Without
    64-bit mode only uint32 ids can exceed int32: they show as 2**31 - 1, which
    is out of range for every table, so they are still never trained.
    """
    dtype = jnp.dtype(given.dtype)
    signed = jnp.issubdtype(dtype, jnp.signedinteger)
    fits = dtype.itemsize <= (4 if signed else 2)
    if fits or jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.int64)).itemsize < 8:
        return ids32
    if not signed and dtype.itemsize == 8:
        given = jnp.minimum(given, np.iinfo(np.int64).max)
    return given.astype(jnp.int64)


class _Shown(str):
    """Text that `repr` shows bare, so a tree of them prints as {'emb': float32[4,2]}."""

    def __repr__(self) -> str:
        return str(self)


_TREE_TEXT_LIMIT = 300  # characters of a described tree in an error message


def _describe_tree(tree: Any) -> str:
    """`tree` as Python prints it, with dtype[shape] for each array (no contents)."""
    text = repr(jax.tree.map(lambda x: _Shown(describe_array(x)), tree))
    if len(text) > _TREE_TEXT_LIMIT:
        return text[:_TREE_TEXT_LIMIT] + " ..."
    return text


def _is_subtree(x: Any) -> bool:
    """True for a dict, list, ... of leaves; False for an array, a scalar or None."""
    return not jax.tree_util.treedef_is_leaf(jax.tree.structure(x))


def _ids_like(params: Any) -> str:
    """The form `ids` takes for `params`: ``ids`` at the largest array (the likely table),
    None elsewhere, as in ``{'emb': ids, 'w': None}``."""
    leaves, treedef = jax.tree.flatten(params)
    shapes = [tuple(getattr(x, "shape", ())) for x in leaves]
    sizes = [math.prod(shape) if shape else -1 for shape in shapes]  # -1: not a table
    table = sizes.index(max(sizes)) if sizes and max(sizes) >= 0 else None
    marked = [_Shown("ids") if i == table else None for i in range(len(leaves))]
    return _describe_tree(jax.tree.unflatten(treedef, marked))


def after_loss(row_grads: jax.Array, loss: jax.Array) -> jax.Array:
    """`row_grads`, unchanged, made to depend on the loss (and so on the lookup).

    The gradient of a loss such as sum(pooled * upstream) does not read the
    rows, so nothing in the compiled step orders the lookup (a read of the
    table) before the optimizer's in-place writes into the donated table.
    XLA:CPU then copies the whole table, twice, to keep the read valid: about
    80 ms of a 100 ms step on a 1M x 64 table. Adding -0.0 (+0.0 when the
    loss is NaN) is exact for every gradient and makes every write wait for
    the loss, which waits for the lookup, so the table is updated in place.
    (An `optimization_barrier` does not order them; an arithmetic dependency
    does.) `tests/test_whole_step_structure.py` counts the table copies of a
    compiled step that returns its loss.
    """
    negative_zero = jnp.full((), -0.0, row_grads.dtype)
    tie = jnp.where(jnp.isnan(loss), jnp.zeros_like(negative_zero), negative_zero)
    return row_grads + tie


_MIRROR_RULE = (
    "ids must mirror params, with an integer id array at each table and None at"
    " every other leaf or subtree"
)


def value_and_row_grad(
    fun: Callable[..., Any], *, has_aux: bool = False, pad_id: int | None = None
) -> Callable[..., Any]:
    """`jax.value_and_grad` for losses that look rows up in embedding tables.

    ``value_and_row_grad(fun)(params, ids, *args)`` looks up ``ids`` in the
    tables of ``params`` and differentiates ``fun`` with respect to the
    looked-up rows instead of the tables, so no table-sized gradient is ever
    built::

        rows     = params with each table T replaced by T[ids_T]   (ids_T.shape + T.shape[1:])
        value    = fun(rows, *args)
        grads[T] = RowSparse(ids_T.reshape(-1), d value / d rows_T reshaped to (n, ...))
        grads[x] = d value / d x                                   (other leaves, as jax.grad)

    ``grads`` has the structure of ``params`` and goes straight into
    `sparse_adagrad`. The gradient with respect to the rows is exactly the
    table's gradient restricted to the looked-up ids, with one entry per
    lookup (duplicates are summed by the optimizer).

    Padding ids (negative, or ``pad_id``) and ids >= the table's row count
    look up a zero row (a table with 0 rows gives zero rows for every id).
    Padding ids come back as -1 in the gradient, so the optimizer skips them;
    out-of-range ids come back unchanged, so ``sparse_adagrad(out_of_range=
    "error")`` can report them: gradient ids are int32, or int64 for int64,
    uint32 and uint64 ids under ``jax_enable_x64`` (an id of 2**32 + 3 comes
    back as itself, not clipped).

    Args:
      fun: ``fun(rows, *args, **kwargs)`` returning a real scalar (or
        ``(scalar, aux)`` with ``has_aux``), where ``rows`` is ``params`` with
        each table replaced by its looked-up rows.
      has_aux: as in `jax.value_and_grad`. Default False.
      pad_id: a row id to look up as a zero row and leave untrained, besides
        negative ids. Default None.

    Returns:
      A function ``(params, ids, *args, **kwargs) -> (value, grads)`` (value is
      ``(loss, aux)`` with ``has_aux``). ``ids`` mirrors ``params``: an integer
      array (any shape) at each table, ``None`` at every other leaf or subtree.
      To look a table up for several features, concatenate their ids.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> params = {"emb": jnp.arange(8.0).reshape(4, 2), "w": jnp.ones(2)}
      >>> def loss(rows, y):
      ...     return jnp.sum((rows["emb"] @ rows["w"] - y) ** 2)
      >>> ids = {"emb": jnp.array([1, 3, 1]), "w": None}
      >>> value, grads = adagrad_jax.value_and_row_grad(loss)(params, ids, jnp.zeros(3))
      >>> grads["emb"].indices, grads["emb"].values[0]
      (Array([1, 3, 1], dtype=int32), Array([10., 10.], dtype=float32))
    """
    caller = "value_and_row_grad"
    if not callable(fun):
        raise TypeError(f"{caller}(fun={fun!r}): fun must be a callable returning a scalar loss.")
    if not isinstance(has_aux, (bool, np.bool_)):
        raise TypeError(f"{caller}(has_aux={has_aux!r}): has_aux must be True or False.")
    check_pad_id(caller, pad_id)
    grad_fn = jax.value_and_grad(fun, has_aux=has_aux)

    def lookup_ids(path, ids, table):
        """(ids for the gradient, zero-filling lookup) for one table."""
        where = f"ids{jax.tree_util.keystr(path)}"
        table_where = f"params{jax.tree_util.keystr(path)}"
        if _is_subtree(table):
            raise ValueError(
                f"{caller}: {where} is one id array ({describe_array(ids)}), but"
                f" {table_where} is a tree, {_describe_tree(table)}: {_MIRROR_RULE}."
                f" Pass {_ids_like(table)} in place of {where}."
            )
        if not hasattr(table, "shape") or jnp.ndim(table) < 1:
            raise ValueError(
                f"{caller}: {where} is an id array, but {table_where}"
                f" is {describe_array(table)}, not a table (an array with a row axis)."
            )
        ids = as_array(ids)
        if not is_index_dtype(ids.dtype):
            raise TypeError(f"{caller}: {where} is {describe_array(ids)}; ids must be integers.")
        num_rows = table.shape[0]
        check_row_count(caller, f"params{jax.tree_util.keystr(path)}", num_rows, ids.size)
        given = ids
        ids = as_int32_ids(ids)
        padding = ids < 0
        if pad_id is not None:
            padding = padding | (ids == jnp.asarray(pad_id).astype(jnp.int32))
        safe = jnp.where(padding | (ids >= num_rows), num_rows, ids)
        if num_rows == 0:  # No row to gather from: every lookup is a zero row.
            rows = jnp.zeros(safe.shape + table.shape[1:], table.dtype)
        else:
            # On an Explicit mesh: a masked gather on each row shard, placed like the ids.
            rows = placement.partitioned(
                lambda t, i: t.at[i].get(mode="fill", fill_value=0),
                (table, safe),
                placement.rows_spec(safe, safe.ndim + table.ndim - 1),
                like=(table, safe),
            )
        return jnp.where(padding, -1, _gradient_ids(given, ids)), rows

    def wrapped(params, ids, *args, **kwargs):
        try:
            pairs = jax.tree_util.tree_map_with_path(
                lambda path, i, p: None if i is None else lookup_ids(path, i, p),
                ids,
                params,
                is_leaf=lambda x: x is None,
            )
            looked_up = jax.tree.map(
                lambda i, p, pair: p if i is None else pair[1],
                ids,
                params,
                pairs,
                is_leaf=lambda x: x is None,
            )
        except ValueError as e:
            if caller in str(e):
                raise
            # JAX's message: the trees differ (the ids are not a prefix of params).
            raise ValueError(
                f"{caller}: {_MIRROR_RULE}, e.g. {_ids_like(params)}; got ids"
                f" {_describe_tree(ids)} for params {_describe_tree(params)}."
            ) from None
        value, row_grads = grad_fn(looked_up, *args, **kwargs)
        loss = value[0] if has_aux else value
        grads = jax.tree.map(
            lambda i, g, pair: (
                g
                if i is None
                else RowSparse(
                    pair[0].reshape(-1),
                    after_loss(g, loss).reshape((-1,) + g.shape[pair[0].ndim :]),
                )
            ),
            ids,
            row_grads,
            pairs,
            is_leaf=lambda x: x is None,
        )
        return value, grads

    return wrapped
