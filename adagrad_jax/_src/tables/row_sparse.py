"""`RowSparse`: the rows of a table's gradient or update, and tree helpers for it."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from jax.tree_util import GetAttrKey

from adagrad_jax._src.core import trees
from adagrad_jax._src.tables.ids import as_int32_ids, clean_ids


def _not_a_random_key(*args, **kwargs):
    del args, kwargs
    raise TypeError("The guard leaf of adagrad_jax.RowSparse is not a random key.")


# JAX prints the guard's dtype as key<_GUARD_TAG> in the errors of operations on
# it (under jit, and through operators and jax.numpy or lax functions), so those
# errors name RowSparse and the fix.
_GUARD_TAG = (
    "adagrad_jax.RowSparse guard: this transform does not support RowSparse;"
    " wrap it in adagrad_jax.on_row_values, or see help(adagrad_jax.RowSparse)"
)


@functools.cache
def _guard_impl() -> Any:
    # A key type exists only to give RowSparse a leaf that refuses arithmetic
    # (see RowSparse's docstring); it draws no random numbers.
    return jax.extend.random.define_prng_impl(
        key_shape=(1,),
        seed=_not_a_random_key,
        split=_not_a_random_key,
        random_bits=_not_a_random_key,
        fold_in=_not_a_random_key,
        name="adagrad_jax.RowSparse guard",
        tag=_GUARD_TAG,
    )


@functools.cache
def _guard_leaf() -> jax.Array:
    """The scalar key array of dtype key<_GUARD_TAG> that every RowSparse carries."""
    with jax.ensure_compile_time_eval():
        return jax.random.wrap_key_data(jnp.zeros((1,), jnp.uint32), impl=_guard_impl())


def describe_array(x: Any) -> str:
    """`float32[4,2]` for arrays, the repr for anything else."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        dims = ",".join(str(d) for d in x.shape)
        return f"{jnp.dtype(x.dtype).name}[{dims}]"
    return repr(x)


def as_array(x: Any) -> Any:  # Any: callers check dtype and shape.
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return x
    return jnp.asarray(x)


def is_index_dtype(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.integer)


_ARITHMETIC_MESSAGE = (
    "adagrad_jax.RowSparse does not support arithmetic: it holds row ids and row"
    " values, and adding or scaling it as if it were a dense array gives wrong"
    " numbers. Apply row-sparse updates with adagrad_jax.apply_updates (not"
    " optax.apply_updates); with Flax NNX, train with adagrad_jax.nnx.Optimizer"
    " (not flax.nnx.Optimizer). Transform their values with"
    " adagrad_jax.on_row_values."
)


@jax.tree_util.register_pytree_with_keys_class
class RowSparse:
    """The rows of a table's gradient or update: ``table[indices[i]] += values[i]``.

    ``indices`` is an integer array of shape (k,), ``values`` has shape
    (k, *table.shape[1:]). Ids may repeat (their values add up); negative ids
    and ids >= the table's row count touch nothing. `RowSparse` is a pytree,
    so it passes through `jax.jit`, `optax.chain`, `optax.masked` and
    `optax.multi_transform` as an argument or result. A RowSparse can be
    copied (``copy.copy``, ``copy.deepcopy``) and pickled.

    Dense-array arithmetic on a `RowSparse` (``+``, ``*``, ``optax.apply_updates``)
    raises a ``TypeError`` that names `adagrad_jax.apply_updates`.

    Functions mapped over every leaf meet a guard. A transform that maps a
    function over every leaf (``optax.scale``, ``optax.scale_by_schedule``,
    ``optax.clip``, ``optax.clip_by_global_norm``, ``jax.lax.pmean``, a
    plain ``jax.tree.map(lambda x: x.astype(d), tree)``) would treat the
    integer row ids as values and change them silently
    (``scale_by_schedule`` casts the step size to int32: every id becomes 0).
    So a RowSparse has a third leaf, ``_guard``, before the ids: a scalar of
    a key dtype (made with ``jax.extend.random.define_prng_impl``) that no
    arithmetic accepts. Such a map fails on the guard and computes nothing:

    - under ``jax.jit``, and eagerly through an operator or a ``jax.numpy``
      or ``jax.lax`` function, JAX's error shows the guard's dtype,
      ``key<adagrad_jax.RowSparse guard: this transform does not support
      RowSparse; wrap it in adagrad_jax.on_row_values, ...>``;
    - eagerly through a method or property of the guard (``x.astype(d)``,
      ``x.sum()``, ``x.real`` in ``optax.clip_by_global_norm``,
      ``np.asarray(x)``), JAX raises its own ``NotImplementedError("Cannot
      call abstract method ...")`` or ``TypeError``, which does not name
      RowSparse: a concrete key array leaves those methods abstract, and
      naming RowSparse there would mean patching methods onto the array.

    No other leaf type does better: a Python object is not a valid ``jit``
    argument, a ``float0`` array's errors name nothing, and ids kept out of
    the leaves (as static data) would recompile every step.

    The fixes: run element-wise transforms on the values only with
    `adagrad_jax.on_row_values`. For a global norm, place
    ``on_row_values(optax.clip_by_global_norm(c))`` after the Adagrad stage,
    whose RowSparse updates hold each distinct id once (and 0 at dead
    entries), so that the norm is the dense update's norm; before it, the
    gradient's duplicate ids count separately (``|a|^2 + |b|^2`` for two
    lookups of a row instead of ``|a + b|^2``). To cast a tree, stop at each
    RowSparse and use `RowSparse.astype`::

        jax.tree.map(lambda x: x.astype(d), tree,
                     is_leaf=lambda x: isinstance(x, adagrad_jax.RowSparse))

    Transforms that keep per-parameter state (``optax.adam``,
    ``optax.MultiSteps``) fail on the tree structure instead: their state has
    an array where the updates have a RowSparse.

    Args:
      indices: integer array of shape (k,): the row ids.
      values: floating or complex array of shape (k, ...): one row per id.

    Raises:
      TypeError: if ``indices`` is not an integer array or ``values`` not a
        floating or complex one.
      ValueError: if ``indices`` is not 1-D or ``values`` has a different
        number of rows.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> g = adagrad_jax.RowSparse(jnp.array([2, 0, 2]), jnp.ones((3, 2)))
      >>> g.todense(4)      # duplicates add up
      Array([[1., 1.],
             [0., 0.],
             [2., 2.],
             [0., 0.]], dtype=float32)
    """

    __slots__ = ("_guard", "indices", "values")
    _guard: jax.Array
    indices: jax.Array
    values: jax.Array

    def __init__(self, indices: jax.typing.ArrayLike, values: jax.typing.ArrayLike):
        ids: Any = as_array(indices)
        vals: Any = as_array(values)
        if not is_index_dtype(ids.dtype):
            raise TypeError(
                f"RowSparse(indices={describe_array(ids)}): indices must be an integer"
                " array of row ids."
            )
        if ids.ndim != 1:
            raise ValueError(
                f"RowSparse(indices={describe_array(ids)}): indices must be 1-D;"
                " flatten the id array (ids.reshape(-1)) and the values to match."
            )
        if not jnp.issubdtype(vals.dtype, jnp.inexact):
            raise TypeError(
                f"RowSparse(values={describe_array(vals)}): values must be a floating"
                " or complex array."
            )
        if vals.ndim < 1 or vals.shape[0] != ids.shape[0]:
            raise ValueError(
                f"RowSparse(values={describe_array(vals)}): values must have one row"
                f" per id, i.e. shape ({ids.shape[0]}, ...), for"
                f" indices={describe_array(ids)}."
            )
        self._set_leaves(guard=_guard_leaf(), indices=ids, values=vals)

    def _set_leaves(self, *, guard: Any, indices: Any, values: Any) -> None:
        # The one place that writes the attributes (__setattr__ refuses).
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)

    def tree_flatten_with_keys(self):
        # The guard first, so that a map over the leaves fails before the ids.
        children = (
            (GetAttrKey("_guard"), self._guard),
            (GetAttrKey("indices"), self.indices),
            (GetAttrKey("values"), self.values),
        )
        return children, None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del aux_data
        # No checks: JAX rebuilds pytrees with tracers, placeholders and None.
        guard, indices, values = children
        obj = object.__new__(cls)
        obj._set_leaves(guard=guard, indices=indices, values=values)
        return obj

    def __reduce__(self) -> tuple[Any, tuple[Any, Any]]:
        # copy.copy, copy.deepcopy and pickle rebuild from the ids and values.
        return _rebuild, (self.indices, self.values)

    def astype(self, dtype: Any) -> RowSparse:
        """The same rows with the values cast to `dtype` (a floating or complex dtype).

        The row ids keep their dtype. ``jax.tree.map(lambda x: x.astype(d), tree)``
        cannot do this, because it reaches the ids (and the guard leaf, where it
        fails); map with ``is_leaf`` so that it stops at each `RowSparse`::

            jax.tree.map(lambda x: x.astype(d), tree,
                         is_leaf=lambda x: isinstance(x, adagrad_jax.RowSparse))

        >>> import jax.numpy as jnp
        >>> RowSparse(jnp.array([1]), jnp.ones((1, 2))).astype(jnp.bfloat16).values.dtype
        dtype(bfloat16)
        """
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"RowSparse.astype(dtype={dtype!r}): row values must stay floating or"
                " complex; cast the ids with RowSparse(g.indices.astype(...), g.values)."
            )
        return RowSparse(self.indices, self.values.astype(dtype))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"RowSparse is immutable; build a new one: RowSparse(indices, values)"
            f" (tried to set {name!r})."
        )

    def __repr__(self) -> str:
        return f"RowSparse(indices={self.indices!r}, values={self.values!r})"

    def todense(self, num_rows: int) -> jax.Array:
        """The dense array of shape (num_rows, ...) that these rows add up to.

        Duplicate ids add up; negative ids and ids >= `num_rows` are dropped.
        This builds the full table-sized array: meant for tests and debugging.
        """
        ids = clean_ids(as_int32_ids(self.indices), num_rows)
        zeros = jnp.zeros((num_rows,) + self.values.shape[1:], self.values.dtype)
        return zeros.at[ids].add(self.values, mode="drop")

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        del args, kwargs
        raise TypeError(_ARITHMETIC_MESSAGE)

    __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __matmul__ = __rmatmul__ = __pow__ = __neg__ = _refuse
    __array__ = _refuse


def _rebuild(indices: Any, values: Any) -> RowSparse:
    """`RowSparse.__reduce__`'s constructor: no checks (the leaves may be placeholders)."""
    return RowSparse.tree_unflatten(None, (_guard_leaf(), indices, values))


def is_row_sparse(x: Any) -> bool:
    return isinstance(x, RowSparse)


def values_view(tree: Any) -> Any:
    """`tree` with each RowSparse replaced by its values."""
    return jax.tree.map(lambda x: x.values if is_row_sparse(x) else x, tree, is_leaf=is_row_sparse)


def path_name(path: Any, name: str = "updates") -> str:
    return name + jax.tree_util.keystr(path)


def check_gradient_dtypes(caller: str, updates: Any) -> None:
    """`trees.check_inexact_leaves` for a gradient tree with `RowSparse` leaves (their values)."""
    trees.check_inexact_leaves(
        caller,
        "updates",
        updates,
        is_leaf=is_row_sparse,
        dtype_of=lambda x: x.values.dtype if is_row_sparse(x) else trees.leaf_dtype(x),
    )


def check_row_sparse(caller: str, where: str, g: RowSparse, row_shape: Any) -> None:
    """Trace-time checks of a RowSparse leaf against its table's row shape."""
    if not is_index_dtype(g.indices.dtype) or g.indices.ndim != 1:
        raise TypeError(
            f"{caller}: {where} is a RowSparse whose indices are"
            f" {describe_array(g.indices)}; they must be 1-D integer row ids. A"
            " transform that does not know RowSparse has changed them: wrap it in"
            " adagrad_jax.on_row_values so that it sees the values only."
        )
    if row_shape is not None and tuple(g.values.shape[1:]) != tuple(row_shape):
        raise ValueError(
            f"{caller}: {where} is a RowSparse with values {describe_array(g.values)}, but"
            f" the table's rows have shape {tuple(row_shape)}: values must have"
            f" shape (k,) + {tuple(row_shape)}."
        )


def check_dense(caller: str, updates: Any) -> None:
    """Raises TypeError naming the first `RowSparse` in `updates`, and how to train its table.

    For the optimizers whose step for a leaf depends on all of its coordinates
    (a matrix statistic, a norm), so that a table's touched rows
    alone cannot give it. The table trains beside them with a row-sparse
    optimizer.
    """
    is_table = lambda x: isinstance(x, RowSparse)
    for path, leaf in jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_table)[0]:
        if is_table(leaf):
            raise TypeError(
                f"{caller}: updates{jax.tree_util.keystr(path)} is a RowSparse (the touched rows"
                f" of an embedding table), but {caller} takes dense gradients only: its step for"
                " a leaf depends on every coordinate of the leaf. Train the table beside it"
                " with adagrad: optax.multi_transform({'dense': "
                f"{caller}(...), 'table': adagrad_jax.adagrad(...)}}, labels), where labels marks"
                " the table's leaf 'table' and the others 'dense', and apply the updates with"
                " adagrad_jax.apply_updates."
            )
