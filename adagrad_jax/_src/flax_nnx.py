"""Flax NNX support (`adagrad_jax.nnx`): row-sparse tables in an NNX training step."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adagrad_jax._src.tables.apply import apply_updates
from adagrad_jax._src.tables.ids import as_int32_ids
from adagrad_jax._src.tables.row_sparse import RowSparse

_ACTIVE = threading.local()  # id(Embed) -> _Lookups while value_and_row_grad traces.


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


@contextlib.contextmanager
def _recording(lookups: dict[int, _Lookups]) -> Iterator[None]:
    previous = getattr(_ACTIVE, "lookups", None)
    _ACTIVE.lookups = lookups
    try:
        yield
    finally:
        _ACTIVE.lookups = previous


class Embed(nnx.Embed):
    """`flax.nnx.Embed` whose table `value_and_row_grad` trains by rows.

    Construction, parameters (the ``embedding`` `flax.nnx.Param`, shape
    ``(num_embeddings, features)``), checkpoints and every output are those of
    `flax.nnx.Embed`: swap the class and nothing else changes. The difference
    shows only under `adagrad_jax.nnx.value_and_row_grad`, which gives this
    table a `RowSparse` gradient holding one row per looked-up id (duplicates
    are summed by the optimizer), and no ``(num_embeddings, features)``
    gradient is built. Elsewhere (``nnx.grad``, ``jax.grad``) it behaves
    exactly like `flax.nnx.Embed`.

    Ids are looked up as `flax.nnx.Embed` looks them up (``jnp.take``). Mask
    padding positions in the loss; the optimizer's ``pad_id`` (and negative
    ids) then leave those rows untouched. ``attend`` (tied output embeddings)
    uses the whole table and is refused under `value_and_row_grad`: train a
    tied table densely.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import adagrad_jax.nnx
      >>> embed = adagrad_jax.nnx.Embed(10, 4, rngs=nnx.Rngs(0))
      >>> embed(jnp.array([[1, 2], [3, 1]])).shape
      (2, 2, 4)
    """

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        rows = super().__call__(inputs, *args, **kwargs)
        lookups = getattr(_ACTIVE, "lookups", None)
        if lookups is None or id(self) not in lookups:
            return rows
        return lookups[id(self)](inputs, rows)

    def attend(self, query: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        lookups = getattr(_ACTIVE, "lookups", None)
        if lookups is not None and id(self) in lookups:
            raise ValueError(
                "adagrad_jax.nnx.value_and_row_grad: Embed.attend uses every row of the table,"
                " so it has no row-sparse gradient. Train a tied embedding densely"
                " (flax.nnx.Embed with nnx.value_and_grad)."
            )
        return super().attend(query, *args, **kwargs)


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
            m = nnx.merge(graphdef, tables, params, rest)
            embeds = [e for _, e in _embeds(m)]
            lookups = {
                id(e): _Lookups(None if deltas is None else deltas[i]) for i, e in enumerate(embeds)
            }
            with _recording(lookups):
                out = fun(m, *args, **kwargs)
            loss, aux = out if has_aux else (out, None)
            new_rest = nnx.split(m, is_table, nnx.Param, ...)[3]
            recorded = [lookups[id(e)] for e in embeds]
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
            by_path[path + ("embedding",)] = RowSparse(indices, values)

        table_grads = nnx.from_flat_state(
            [
                (path, variable.replace(by_path[tuple(path)]))
                for path, variable in nnx.to_flat_state(tables)
            ]
        )
        grads = nnx.merge_state(d_params, table_grads)
        return ((loss, aux) if has_aux else loss), grads

    return wrapped


class Optimizer(nnx.Optimizer):
    """`flax.nnx.Optimizer` that applies `RowSparse` updates to their tables.

    Same constructor and state as `flax.nnx.Optimizer` (``Optimizer(model, tx,
    wrt=nnx.Param)``); `update` differs only in applying the updates with
    `adagrad_jax.apply_updates` instead of `optax.apply_updates`, so
    gradients from `adagrad_jax.nnx.value_and_row_grad` (a `RowSparse` per
    table, arrays elsewhere) train the tables by rows: only the touched rows of
    a table and of its optimizer state are written. Dense gradients (from
    `nnx.grad`) give exactly what `flax.nnx.Optimizer` gives.

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

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """Updates the optimizer state and the model's parameters from ``grads``.

        Args:
          model: the NNX model whose ``wrt`` parameters are trained.
          grads: gradients shaped like ``nnx.state(model, wrt)``: from
            `adagrad_jax.nnx.value_and_row_grad` (`RowSparse` at tables) or
            from `nnx.grad`.
          **kwargs: passed on to ``tx.update``, as in `flax.nnx.Optimizer`.

        Returns:
          The updates that were applied (`RowSparse` at tables).
        """
        param_arrays = nnx.as_pure(nnx.state(model, self.wrt, graph=self.graph))
        grad_arrays = nnx.as_pure(nnx.state(grads, self.wrt, graph=self.graph))
        opt_state_arrays = nnx.as_pure(self.opt_state)
        updates, new_opt_state = self.tx.update(
            grad_arrays, opt_state_arrays, param_arrays, **nnx.as_pure(kwargs)
        )
        nnx.update(model, apply_updates(param_arrays, updates))
        nnx.update(self.opt_state, nnx.state(new_opt_state, graph=self.graph))
        self.step[...] += 1
        return updates
