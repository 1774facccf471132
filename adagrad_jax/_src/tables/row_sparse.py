"""`RowSparse`: the rows of a table's gradient or update, and tree helpers for it."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from jax.tree_util import GetAttrKey

from adagrad_jax._src.tables.ids import as_int32_ids, clean_ids


def _not_a_random_key(*args, **kwargs):
    del args, kwargs
    raise TypeError("The guard leaf of adagrad_jax.RowSparse is not a random key.")


@functools.cache
def _guard_impl() -> Any:
    # A key type exists only to give RowSparse a leaf that refuses arithmetic:
    # a transform that maps a function over every leaf (optax.scale,
    # scale_by_schedule, clip_by_global_norm, lax.pmean, ...) would otherwise
    # rescale the integer row ids silently (scale_by_schedule even casts the
    # step size to int32 first). The tag is what the resulting TypeError shows.
    return jax.extend.random.define_prng_impl(
        key_shape=(1,),
        seed=_not_a_random_key,
        split=_not_a_random_key,
        random_bits=_not_a_random_key,
        fold_in=_not_a_random_key,
        name="adagrad_jax.RowSparse guard",
        tag="adagrad_jax.RowSparse guard: this transform does not support RowSparse;"
        " see help(adagrad_jax.RowSparse)",
    )


@functools.cache
def _guard() -> jax.Array:
    with jax.ensure_compile_time_eval():
        guard = jax.random.wrap_key_data(jnp.zeros((1,), jnp.uint32), impl=_guard_impl())
    return _name_guard(guard)


_GUARD_HINT = (
    " reached the guard leaf of an adagrad_jax.RowSparse, which stops functions"
    " mapped over every leaf: they would treat its integer row ids as values too."
    " Map with is_leaf=lambda x: isinstance(x, adagrad_jax.RowSparse) and handle"
    " each RowSparse whole (RowSparse.astype(dtype) casts its values; .indices and"
    " .values are plain arrays), or wrap the transform in adagrad_jax.on_row_values."
)


def _refusing_method(name: str) -> Any:
    def method(*args: Any, **kwargs: Any) -> Any:
        del args, kwargs
        raise TypeError(f"{name}(){_GUARD_HINT}")

    return method


@functools.cache
def _refused_method_names(cls: Any) -> tuple[str, ...]:
    """The public methods a concrete key array leaves abstract (astype, sum, ...),
    and ``__array__`` (NumPy looks it up on the instance: ``np.asarray``)."""
    abstract = tuple(
        name
        for name in dir(cls)
        if not name.startswith("_")
        and inspect.isfunction(inspect.getattr_static(cls, name))
        and getattr(inspect.getattr_static(cls, name), "__isabstractmethod__", False)
    )
    return (*abstract, "__array__")


def _name_guard(guard: Any) -> Any:
    """`guard`, made to name itself when a method JAX leaves abstract is called.

    Under tracing such calls (``x.astype(d)``, ``x.sum()``) reach the key
    dtype's rules, whose error shows the guard's tag. A concrete key array
    instead raises JAX's bare "Cannot call abstract method astype"; instance
    attributes of the same names (which win over the class's functions)
    raise a TypeError that names RowSparse and the fix. Tracers and other
    leaves are returned untouched.
    """
    if (
        isinstance(guard, jax.Array)
        and not isinstance(guard, jax.core.Tracer)
        and jax.dtypes.issubdtype(guard.dtype, jax.dtypes.prng_key)
        and "astype" not in vars(guard)
    ):
        cls: Any = type(guard)  # Any: mypy sees jax.Array's __hash__ as unhashable
        for name in _refused_method_names(cls):
            setattr(guard, name, _refusing_method(name))
    return guard


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
    " optax.apply_updates), and transform their values with"
    " adagrad_jax.on_row_values."
)


@jax.tree_util.register_pytree_with_keys_class
class RowSparse:
    """The rows of a table's gradient or update: ``table[indices[i]] += values[i]``.

    ``indices`` is an integer array of shape (k,), ``values`` has shape
    (k, *table.shape[1:]). Ids may repeat (their values add up); negative ids
    and ids >= the table's row count touch nothing. `RowSparse` is a pytree,
    so it passes through `jax.jit`, `optax.chain`, `optax.masked` and
    `optax.multi_transform` as an argument or result.

    Dense-array arithmetic on a `RowSparse` raises ``TypeError``. Besides
    ``indices`` and ``values`` it carries a scalar guard leaf of a key dtype
    that refuses arithmetic, so a transform that maps a function over every
    leaf (``optax.scale``, ``optax.scale_by_schedule``, ``optax.clip``,
    ``jax.lax.pmean``, ...) fails with a ``TypeError`` naming
    ``adagrad_jax.RowSparse guard`` instead of silently rescaling the row ids
    (norms such as ``optax.clip_by_global_norm`` fail inside ``jnp.real``
    with a ``NotImplementedError``). Wrap such transforms in
    `adagrad_jax.on_row_values`. To cast a tree holding RowSparse leaves,
    use `RowSparse.astype` with ``jax.tree.map(..., is_leaf=...)``: a plain
    ``jax.tree.map(lambda x: x.astype(d), tree)`` reaches the guard, which
    raises a ``TypeError`` naming RowSparse and this fix (eagerly and under
    ``jit``) rather than cast the row ids. A RowSparse can be copied
    (``copy.copy``, ``copy.deepcopy``) and pickled. Transforms that keep per-parameter state
    (``optax.adam``, ``optax.MultiSteps``) fail on the tree structure instead:
    their state has an array where the updates have a RowSparse.

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

    # The guard comes first, so that a leaf-wise map meets it before the ids.
    __slots__ = ("_guard", "indices", "values")
    _guard: jax.Array
    indices: jax.Array
    values: jax.Array

    def __init__(self, indices: jax.typing.ArrayLike, values: jax.typing.ArrayLike):
        ids: Any = as_array(indices)
        vals: Any = as_array(values)
        if not is_index_dtype(ids.dtype):
            raise TypeError(
                f"RowSparse(indices={describe_array(ids)}): indices must be an integer array of row ids."
            )
        if ids.ndim != 1:
            raise ValueError(
                f"RowSparse(indices={describe_array(ids)}): indices must be 1-D;"
                " flatten the id array (ids.reshape(-1)) and the values to match."
            )
        if not jnp.issubdtype(vals.dtype, jnp.inexact):
            raise TypeError(
                f"RowSparse(values={describe_array(vals)}): values must be a floating or complex array."
            )
        if vals.ndim < 1 or vals.shape[0] != ids.shape[0]:
            raise ValueError(
                f"RowSparse(values={describe_array(vals)}): values must have one row"
                f" per id, i.e. shape ({ids.shape[0]}, ...), for"
                f" indices={describe_array(ids)}."
            )
        object.__setattr__(self, "indices", ids)
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "_guard", _guard())

    def __reduce__(self) -> tuple[Any, tuple[Any, Any]]:
        # copy.copy, copy.deepcopy and pickle rebuild from the ids and values; the
        # guard is made anew (slots and __setattr__ would refuse the default way).
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

    def tree_flatten_with_keys(self):
        return (
            (GetAttrKey("guard"), self._guard),
            (GetAttrKey("indices"), self.indices),
            (GetAttrKey("values"), self.values),
        ), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        del aux_data
        # No checks: JAX rebuilds pytrees with tracers, placeholders and None.
        obj = object.__new__(cls)
        for name, child in zip(cls.__slots__, children):
            object.__setattr__(obj, name, child)
        if children:  # a concrete guard from jit, device_put or tree.map
            object.__setattr__(obj, "_guard", _name_guard(children[0]))
        return obj

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
    """`RowSparse.__reduce__`'s constructor: no checks (tree_unflatten's children may be any)."""
    return RowSparse.tree_unflatten(None, (_guard(), indices, values))


def is_row_sparse(x: Any) -> bool:
    return isinstance(x, RowSparse)


def values_view(tree: Any) -> Any:
    """`tree` with each RowSparse replaced by its values."""
    return jax.tree.map(lambda x: x.values if is_row_sparse(x) else x, tree, is_leaf=is_row_sparse)


def path_name(path: Any, name: str = "updates") -> str:
    return name + jax.tree_util.keystr(path)


def check_row_sparse(fn: str, where: str, g: RowSparse, row_shape: Any) -> None:
    """Trace-time checks of a RowSparse leaf against its table's row shape."""
    if not is_index_dtype(g.indices.dtype) or g.indices.ndim != 1:
        raise TypeError(
            f"{fn}: {where} is a RowSparse whose indices are"
            f" {describe_array(g.indices)}; they must be 1-D integer row ids. A"
            " transform that does not know RowSparse has changed them: wrap it in"
            " adagrad_jax.on_row_values so that it sees the values only."
        )
    if row_shape is not None and tuple(g.values.shape[1:]) != tuple(row_shape):
        raise ValueError(
            f"{fn}: {where} is a RowSparse with values {describe_array(g.values)}, but"
            f" the table's rows have shape {tuple(row_shape)}: values must have"
            f" shape (k,) + {tuple(row_shape)}."
        )
