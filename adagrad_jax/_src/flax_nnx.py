"""Flax NNX support (`adagrad_jax.nnx`): row-sparse tables in an NNX training step.

How the pieces fit, without globals and without copying Flax's code:

- `value_and_row_grad` differentiates a copy of the model that it builds with
  ``nnx.split``/``nnx.merge`` inside its own trace. It gives each `Embed` of that
  copy a `_Lookups` recorder (the ``_row_lookups`` attribute; the class default
  is None), calls the loss, and reads the recorded ids and row gradients back.
  The caller's model never carries a recorder, so `Embed` reads only itself.
- `Optimizer` is `flax.nnx.Optimizer` with Flax's ``update`` (and its checks)
  unchanged; its ``__init__`` only wraps ``tx``, so that each `RowSparse`
  update comes out as a `_RowsToAdd`. Flax's ``update`` applies updates with
  ``optax.apply_updates``, i.e. ``param + update``; a table hands ``+`` to
  ``_RowsToAdd.__radd__``, which writes the rows (`adagrad_jax.apply_updates`).
- `Embed` looks up a zero row for ids >= ``num_embeddings`` (Flax's gives NaN),
  as `adagrad_jax.value_and_row_grad` does; the optimizer's ``out_of_range``
  then drops such ids or reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import filterlib

from adagrad_jax._src.tables.apply import apply_updates
from adagrad_jax._src.tables.grad import after_loss
from adagrad_jax._src.tables.ids import as_int32_ids
from adagrad_jax._src.tables.row_sparse import RowSparse, is_row_sparse


class _Lookups:
    """The lookups of one `Embed` during one trace of the loss."""

    def __init__(self, deltas: list[jax.Array] | None):
        self.deltas = deltas  # None: the shape pass; else one zero array per lookup.
        self.ids: list[jax.Array] = []
        self.outputs: list[jax.ShapeDtypeStruct] = []

    def __call__(self, ids: jax.Array, rows: jax.Array) -> jax.Array:
        position = len(self.ids)
        self.ids.append(ids)
        self.outputs.append(jax.ShapeDtypeStruct(rows.shape, rows.dtype))
        if self.deltas is None:
            return rows
        if position >= len(self.deltas):
            raise ValueError(
                "adagrad_jax.nnx.value_and_row_grad: an Embed table was looked up more times"
                " than when the loss was first traced; the loss must look each table up the"
                " same number of times, with ids of the same shapes, on every call."
            )
        # d loss / d delta is d loss / d rows: the table's gradient restricted to the ids.
        return rows + self.deltas[position]


class Embed(nnx.Embed):
    """`flax.nnx.Embed` whose table `value_and_row_grad` trains by rows.

    Construction, parameters (the ``embedding`` `flax.nnx.Param`, shape
    ``(num_embeddings, features)``), checkpoints and every output for ids
    below ``num_embeddings`` are those of `flax.nnx.Embed`: swap the class
    and nothing else changes. The difference shows under
    `adagrad_jax.nnx.value_and_row_grad`, which gives this table a
    `RowSparse` gradient holding one row per looked-up id (duplicates are
    summed by the optimizer), and no ``(num_embeddings, features)`` gradient
    is built. Elsewhere (``nnx.grad``, ``jax.grad``) it behaves like
    `flax.nnx.Embed`.

    An id >= ``num_embeddings`` looks up a zero row, as in
    `adagrad_jax.value_and_row_grad` (`flax.nnx.Embed` gives a NaN row,
    which turns the loss and then every parameter into NaN). Its gradient
    keeps the id, so the optimizer skips it (``out_of_range="drop"``, the
    default) or raises naming it (``out_of_range="error"``). A negative id
    is padding, as everywhere in this package: it looks up a zero row (where
    `flax.nnx.Embed` would count from the end of the table) and the
    optimizer leaves every row untouched for it; so does the optimizer's
    ``pad_id``, whose positions should be masked in the loss.
    ``attend`` (tied output embeddings) uses the whole table and is refused
    under `value_and_row_grad`: train a tied table densely.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import adagrad_jax.nnx
      >>> embed = adagrad_jax.nnx.Embed(10, 4, rngs=nnx.Rngs(0))
      >>> embed(jnp.array([[1, 2], [3, 1]])).shape
      (2, 2, 4)
      >>> embed(jnp.array([10, -1]))   # out of range and padding: zero rows
      Array([[0., 0., 0., 0.],
             [0., 0., 0., 0.]], dtype=float32)
    """

    # Set only on the copy of the model that value_and_row_grad differentiates.
    _row_lookups: _Lookups | None = None

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        rows = super().__call__(inputs, out_sharding=out_sharding)
        ids = as_int32_ids(inputs)
        no_row = (ids < 0) | (ids >= self.num_embeddings)
        rows = jnp.where(no_row[..., None], jnp.zeros((), rows.dtype), rows)
        if self._row_lookups is None:
            return rows
        return self._row_lookups(inputs, rows)

    def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
        if self._row_lookups is not None:
            raise ValueError(
                "adagrad_jax.nnx.value_and_row_grad: Embed.attend uses every row of the table,"
                " so it has no row-sparse gradient. Train a tied embedding densely"
                " (flax.nnx.Embed with nnx.value_and_grad)."
            )
        return super().attend(query, out_sharding=out_sharding)


def _embeds(model: Any) -> list[tuple[tuple[Any, ...], Embed]]:
    return [(tuple(path), m) for path, m in nnx.iter_modules(model) if isinstance(m, Embed)]


def value_and_row_grad(
    fun: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, nnx.State]]:
    """`flax.nnx.value_and_grad` with row gradients for `adagrad_jax.nnx.Embed` tables.

    ``value_and_row_grad(fun)(model, *args)`` returns ``(fun(model, *args),
    grads)`` where ``grads`` has the structure of ``nnx.state(model,
    nnx.Param)``: dense gradients for every parameter except the ``embedding``
    table of each `adagrad_jax.nnx.Embed` in ``model``, which gets a
    ``RowSparse(ids.reshape(-1), d fun / d rows)`` built from the lookups
    ``fun`` made (several lookups of one table are concatenated). ``fun`` is
    the ordinary NNX loss, ``fun(model, *args, **kwargs)``, called once more
    under `jax.eval_shape` to learn the lookups' shapes. The gradient with
    respect to the looked-up rows is exactly the table's gradient restricted
    to those ids, so training gives what dense training gives (see
    `adagrad_jax.adagrad` on tables), at O(rows looked up) per step.

    State that ``fun`` changes in the model other than parameters (batch
    statistics, RNG counts) is written back to ``model``, as
    `flax.nnx.value_and_grad` does. Every lookup must go through
    ``Embed.__call__``, the same number of times with ids of the same shapes
    on every trace.

    Args:
      fun: ``fun(model, *args, **kwargs)`` returning a real scalar loss (or
        ``(loss, aux)`` with ``has_aux``).
      has_aux: as in `jax.value_and_grad`. Default False.

    Returns:
      A function ``(model, *args, **kwargs) -> (value, grads)`` for
      `adagrad_jax.nnx.Optimizer.update`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import adagrad_jax, adagrad_jax.nnx
      >>> class Model(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.embed = adagrad_jax.nnx.Embed(1000, 4, rngs=rngs)
      ...         self.out = nnx.Linear(4, 1, rngs=rngs)
      ...     def __call__(self, ids):
      ...         return self.out(self.embed(ids).mean(axis=1))[:, 0]
      >>> model = Model(nnx.Rngs(0))
      >>> def loss_fn(model, ids, y):
      ...     return jnp.mean((model(ids) - y) ** 2)
      >>> ids = jnp.array([[3, 7], [7, 9]])
      >>> loss, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, jnp.ones(2))
      >>> grads["embed"]["embedding"].get_value().indices
      Array([3, 7, 7, 9], dtype=int32)
      >>> grads["out"]["kernel"][...].shape
      (4, 1)
    """
    if not callable(fun):
        raise TypeError(
            f"adagrad_jax.nnx.value_and_row_grad(fun={fun!r}): fun must be a callable"
            " fun(model, *args) returning a scalar loss."
        )

    def wrapped(model: Any, *args: Any, **kwargs: Any) -> tuple[Any, nnx.State]:
        table_paths = {path + ("embedding",) for path, _ in _embeds(model)}

        def is_table(path: Any, _: Any) -> bool:
            return tuple(path) in table_paths

        graphdef, tables, params, rest = nnx.split(model, is_table, nnx.Param, ...)  # type: ignore[misc]

        def run(deltas, params, tables, rest):
            m = nnx.merge(graphdef, tables, params, rest)  # a copy, private to this trace
            embeds = [e for _, e in _embeds(m)]
            recorded = [_Lookups(None if deltas is None else deltas[i]) for i in range(len(embeds))]
            for embed, lookups in zip(embeds, recorded):
                embed._row_lookups = lookups
            out = fun(m, *args, **kwargs)
            for embed in embeds:
                embed._row_lookups = None
            loss, aux = out if has_aux else (out, None)
            new_rest = nnx.split(m, is_table, nnx.Param, ...)[3]
            return loss, (aux, [r.ids for r in recorded], [r.outputs for r in recorded], new_rest)

        shapes = jax.eval_shape(lambda p, t, r: run(None, p, t, r)[1][2], params, tables, rest)
        deltas = [[jnp.zeros(s.shape, s.dtype) for s in per_embed] for per_embed in shapes]
        (loss, (aux, ids, _, new_rest)), (d_deltas, d_params) = jax.value_and_grad(
            run, argnums=(0, 1), has_aux=True
        )(deltas, params, tables, rest)
        nnx.update(model, new_rest)

        by_path = {}
        for (path, embed), embed_ids, embed_grads in zip(_embeds(model), ids, d_deltas):
            features = embed.features
            if embed_ids:
                indices = jnp.concatenate([as_int32_ids(i).reshape(-1) for i in embed_ids])
                values = jnp.concatenate([g.reshape(-1, features) for g in embed_grads])
            else:  # never looked up: an empty update
                table = embed.embedding[...]
                indices = jnp.zeros((0,), jnp.int32)
                values = jnp.zeros((0, features), table.dtype)
            # Tied to the loss, so the optimizer's writes wait for the lookups (grad.after_loss).
            by_path[path + ("embedding",)] = RowSparse(indices, after_loss(values, loss))

        table_grads = nnx.from_flat_state(
            [
                (path, variable.replace(by_path[tuple(path)]))
                for path, variable in nnx.to_flat_state(tables)
            ]
        )
        grads = nnx.merge_state(d_params, table_grads)
        return ((loss, aux) if has_aux else loss), grads

    return wrapped


@jax.tree_util.register_pytree_with_keys_class
class _RowsToAdd(RowSparse):
    """A `RowSparse` update that ``table + update`` writes into its table.

    `flax.nnx.Optimizer.update` applies updates with ``optax.apply_updates``,
    which computes ``param + update`` for each parameter. A JAX array hands
    ``+`` with an operand it does not know to that operand's ``__radd__``,
    which here adds the rows to the table (`adagrad_jax.apply_updates`: only
    the touched rows are written; negative ids and ids >= the row count are
    dropped). Every other arithmetic stays refused, as on `RowSparse`.
    """

    def __radd__(self, table: Any) -> Any:
        return apply_updates(table, self)


def _as_rows_to_add(update: Any) -> Any:
    return _RowsToAdd(update.indices, update.values) if is_row_sparse(update) else update


def _rows_added_by_flax(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` with each `RowSparse` update returned as a `_RowsToAdd` (same init and state)."""
    init, update = tx.init, tx.update

    def update_fn(updates, state, params=None, **extra_args):
        updates, state = update(updates, state, params, **extra_args)
        return jax.tree.map(_as_rows_to_add, updates, is_leaf=is_row_sparse), state

    return optax.GradientTransformationExtraArgs(init, update_fn)


class Optimizer(nnx.Optimizer):
    """`flax.nnx.Optimizer` that applies `RowSparse` updates to their tables.

    Same constructor, checks, state and ``update`` as `flax.nnx.Optimizer`
    (``Optimizer(model, tx, wrt=nnx.Param)``, then ``update(model, grads)``):
    Flax's own code runs. Only the application of a `RowSparse` update
    differs: it adds its rows to the table as `adagrad_jax.apply_updates`
    does (only the touched rows of a table and of its optimizer state are
    written), so gradients from `adagrad_jax.nnx.value_and_row_grad` (a
    `RowSparse` per table, arrays elsewhere) train the tables by rows. Dense
    gradients (from `nnx.grad`) give exactly what `flax.nnx.Optimizer` gives.
    ``optimizer.tx`` is ``tx`` wrapped to mark its `RowSparse` updates for
    this (same ``init`` and state); ``update`` returns the applied updates,
    a `RowSparse` at each table.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import adagrad_jax, adagrad_jax.nnx
      >>> model = nnx.Sequential(adagrad_jax.nnx.Embed(100, 2, rngs=nnx.Rngs(0)))
      >>> optimizer = adagrad_jax.nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)
      >>> def loss_fn(model, ids):
      ...     return model(ids).sum()
      >>> before = model.layers[0].embedding[...]
      >>> _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, jnp.array([5, 6]))
      >>> _ = optimizer.update(model, grads)
      >>> moved = (model.layers[0].embedding[...] != before).any(axis=1)
      >>> jnp.flatnonzero(moved)   # only the looked-up rows
      Array([5, 6], dtype=int32)
    """

    def __init__(
        self,
        model: Any,
        tx: optax.GradientTransformation,
        *,
        wrt: filterlib.Filter,
        graph: bool | None = None,
    ):
        super().__init__(model, _rows_added_by_flax(tx), wrt=wrt, graph=graph)
