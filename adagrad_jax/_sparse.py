"""The row-sparse path for embedding tables.

`RowSparse` holds the gradient (or update) of a table restricted to the rows a
batch touched. `scale_by_sparse_adagrad` / `sparse_adagrad` accept it where a
parameter is a table and return row-sparse updates for those leaves (dense
leaves get exactly the dense Adagrad result); `apply_updates` scatters them
into the tables; `value_and_row_grad` gives row gradients of a loss without a
dense table gradient; `on_row_values` runs a stateless optax transform on the
rows' values only.

A step reads and writes only the touched rows of a table and of its
accumulator, so under `jax.jit` with the table and the optimizer state donated
it costs O(k * D) for k looked-up ids, and XLA updates both buffers in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import checkify
from jax.tree_util import GetAttrKey

from adagrad_jax import _validation
from adagrad_jax._adagrad import (
    ScaleByAdagradState,
    adagrad_direction,
    init_sum_of_squares,
    squared_magnitude,
)

_INT32_MAX = int(np.iinfo(np.int32).max)
_OUT_OF_RANGE_MODES = ("drop", "error")


# ----------------------------------------------------------------------------
# RowSparse
# ----------------------------------------------------------------------------

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
        return jax.random.wrap_key_data(np.zeros((1,), np.uint32), impl=_guard_impl())


def _describe(x: Any) -> str:
    """`float32[4,2]` for arrays, the repr for anything else."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        dims = ",".join(str(d) for d in x.shape)
        return f"{jnp.dtype(x.dtype).name}[{dims}]"
    return repr(x)


def _as_array(x: Any) -> Any:
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return x
    return jnp.asarray(x)


def _is_index_dtype(dtype: Any) -> bool:
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
    `adagrad_jax.on_row_values`. Transforms that keep per-parameter state
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

    def __init__(self, indices: jax.typing.ArrayLike, values: jax.typing.ArrayLike):
        indices = _as_array(indices)
        values = _as_array(values)
        if not _is_index_dtype(indices.dtype):
            raise TypeError(
                f"RowSparse(indices={_describe(indices)}): indices must be an"
                " integer array of row ids."
            )
        if indices.ndim != 1:
            raise ValueError(
                f"RowSparse(indices={_describe(indices)}): indices must be 1-D;"
                " flatten the id array (ids.reshape(-1)) and the values to match."
            )
        if not jnp.issubdtype(values.dtype, jnp.inexact):
            raise TypeError(
                f"RowSparse(values={_describe(values)}): values must be a floating"
                " or complex array."
            )
        if values.ndim < 1 or values.shape[0] != indices.shape[0]:
            raise ValueError(
                f"RowSparse(values={_describe(values)}): values must have one row"
                f" per id, i.e. shape ({indices.shape[0]}, ...), for"
                f" indices={_describe(indices)}."
            )
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_guard", _guard())

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
        return obj

    def __repr__(self) -> str:
        return f"RowSparse(indices={self.indices!r}, values={self.values!r})"

    def todense(self, num_rows: int) -> jax.Array:
        """The dense array of shape (num_rows, ...) that these rows add up to.

        Duplicate ids add up; negative ids and ids >= `num_rows` are dropped.
        This builds the full table-sized array: meant for tests and debugging.
        """
        ids = _clean_ids(_as_int32_ids(self.indices), num_rows)
        zeros = jnp.zeros((num_rows,) + self.values.shape[1:], self.values.dtype)
        return zeros.at[ids].add(self.values, mode="drop")

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        del args, kwargs
        raise TypeError(_ARITHMETIC_MESSAGE)

    __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __matmul__ = __rmatmul__ = __pow__ = __neg__ = _refuse
    __array__ = _refuse


def _is_row_sparse(x: Any) -> bool:
    return isinstance(x, RowSparse)


def _values_view(tree: Any) -> Any:
    """`tree` with each RowSparse replaced by its values."""
    return jax.tree.map(
        lambda x: x.values if _is_row_sparse(x) else x, tree, is_leaf=_is_row_sparse
    )


def _path(path: Any, name: str = "updates") -> str:
    return name + jax.tree_util.keystr(path)


def _as_int32_ids(ids: jax.Array) -> jax.Array:
    """Row ids as int32, keeping every id's class (negative, in range, too big).

    Dtypes wider than int32 are clipped into [-1, 2**31 - 1] first, so a huge
    id stays out of range rather than wrapping round to a negative (padding)
    or small (valid) id.
    """
    dtype = jnp.dtype(ids.dtype)
    signed = jnp.issubdtype(dtype, jnp.signedinteger)
    if (signed and dtype.itemsize <= 4) or (not signed and dtype.itemsize <= 2):
        return ids.astype(jnp.int32)
    return jnp.clip(ids, -1 if signed else 0, _INT32_MAX).astype(jnp.int32)


def _clean_ids(ids: jax.Array, num_rows: int) -> jax.Array:
    """int32 ids with negative ones moved to `num_rows`, where mode="drop" drops them.

    (`.at[]` would otherwise count a negative id from the end of the table.)
    """
    return jnp.where(ids < 0, num_rows, ids)


def _check_row_count(fn: str, where: str, num_rows: int, k: int) -> None:
    if num_rows + k > _INT32_MAX:
        raise ValueError(
            f"{fn}: {where} has {num_rows} rows and {k} ids; row ids are int32, so"
            f" rows + ids must stay below 2**31."
        )


def _check_row_sparse(fn: str, where: str, g: RowSparse, row_shape: Any) -> None:
    """Trace-time checks of a RowSparse leaf against its table's row shape."""
    if not _is_index_dtype(g.indices.dtype) or g.indices.ndim != 1:
        raise TypeError(
            f"{fn}: {where} is a RowSparse whose indices are"
            f" {_describe(g.indices)}; they must be 1-D integer row ids. A"
            " transform that does not know RowSparse has changed them: wrap it in"
            " adagrad_jax.on_row_values so that it sees the values only."
        )
    if row_shape is not None and tuple(g.values.shape[1:]) != tuple(row_shape):
        raise ValueError(
            f"{fn}: {where} is a RowSparse with values {_describe(g.values)}, but"
            f" the table's rows have shape {tuple(row_shape)}: values must have"
            f" shape (k,) + {tuple(row_shape)}."
        )


# ----------------------------------------------------------------------------
# scale_by_sparse_adagrad
# ----------------------------------------------------------------------------

def _row_mean(sq: jax.Array) -> jax.Array:
    """Mean over every axis but the first (the row axis); rows of 1-D leaves are scalars."""
    if sq.ndim <= 1:
        return sq
    return jnp.mean(sq, axis=tuple(range(1, sq.ndim)))


def _per_row(acc: jax.Array, ndim: int) -> jax.Array:
    """(k,) -> (k, 1, ..., 1) so that one accumulator entry scales a whole row."""
    return acc.reshape(acc.shape + (1,) * (ndim - acc.ndim))


def _row_sharding(p: Any) -> Any:
    """The sharding of a row-wise accumulator for a parameter placed like `p`."""
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec)[:1]
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return None


def _dense_leaf(g, s, *, eps, eps_root, tau, row_wise):
    if not row_wise:
        # Exactly scale_by_adagrad's arithmetic.
        s = s + squared_magnitude(g, s.dtype)
        return adagrad_direction(g, s, eps, eps_root, tau=tau), s
    s = s + _row_mean(squared_magnitude(g, s.dtype))
    return adagrad_direction(g, _per_row(s, g.ndim), eps, eps_root, tau=tau), s


_HASH_MULTIPLIER = 0x9E3779B1  # odd, about 2**32 / golden ratio (Fibonacci hashing)
_HASH_ROUND_SALT = 0x85EBCA6B  # xor-ed in times the round number: a new hash each round


def _dedup(
    ids: jax.Array, num_rows: int, *, table_bits: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Fixed-size deduplication of int32 ids in [0, num_rows] (num_rows = dead).

    Returns `slot` (k,) and `rows` (k,)::

        slot[i] = the first position j with ids[j] == ids[i]   (i itself for a dead id)
        rows[j] = ids[j]          if j is the first position of a live id
                  num_rows + j    otherwise (out of range, all distinct)

    so `rows` lists each distinct live id once, in order of first appearance,
    and id ``ids[i]`` belongs to slot ``slot[i]``. Found without sorting, by
    rounds of hashing into a table of ``2**table_bits`` buckets (default: the
    smallest power of two >= 4k): in round r each unresolved live id i
    hashes ids[i] to a bucket, each bucket keeps the smallest position hashed
    to it (a scatter-min), and i is resolved when that position p holds the
    same id (ids[p] == ids[i]). All occurrences of an id share their buckets
    and are resolved together, so p is the id's first position; each round
    resolves at least the id that won each bucket, so the loop ends (with at
    most 1/4 of the buckets used, usually after 2 or 3 rounds). Sorting the k
    ids on CPU costs several times as much.

    >>> rows, slot = _dedup(jnp.array([7, 3, 7, 9, 3]), 9)   # 9 is dead
    >>> rows, slot
    (Array([ 7,  3, 11, 12, 13], dtype=int32), Array([0, 1, 0, 3, 1], dtype=int32))
    """
    k = ids.shape[0]
    if table_bits is None:
        table_bits = min((k - 1).bit_length() + 2, 30)
    size = 1 << table_bits
    iota = lax.iota(jnp.int32, k)
    key = ids.astype(jnp.uint32)

    def one_round(carry):
        r, slot, pending = carry
        salted = key ^ (r.astype(jnp.uint32) * jnp.uint32(_HASH_ROUND_SALT))
        bucket = ((salted * jnp.uint32(_HASH_MULTIPLIER)) >> (32 - table_bits)).astype(jnp.int32)
        bucket = jnp.where(pending, bucket, size)  # resolved and dead ids: dropped
        first = jnp.full((size,), k, jnp.int32).at[bucket].min(iota, mode="drop")
        owner = jnp.where(pending, first.at[bucket].get(mode="fill", fill_value=0), iota)
        won = pending & (ids.at[owner].get(mode="promise_in_bounds") == ids)
        return r + 1, jnp.where(won, owner, slot), pending & ~won

    live = ids < num_rows
    _, slot, _ = lax.while_loop(
        lambda carry: jnp.any(carry[2]), one_round, (jnp.int32(0), iota, live)
    )
    rows = jnp.where(live & (slot == iota), ids, num_rows + iota)
    return rows, slot


def _sparse_leaf(fn, where, g, s, *, eps, eps_root, tau, row_wise, pad_id, out_of_range):
    num_rows = s.shape[0]
    k = g.indices.shape[0]
    _check_row_count(fn, where, num_rows, k)
    ids = _as_int32_ids(g.indices)
    padding = ids < 0
    if pad_id is not None:
        padding = padding | (ids == jnp.asarray(pad_id).astype(jnp.int32))
    too_big = (ids >= num_rows) & ~padding
    if out_of_range == "error" and k:
        position = jnp.argmax(too_big)
        safe_where = where.replace("{", "{{").replace("}", "}}")
        checkify.check(
            ~jnp.any(too_big),
            f"{fn}(out_of_range='error'): {safe_where} holds row id {{id}} at"
            f" position {{position}}, but the table has {num_rows} rows (ids 0 to"
            f" {num_rows - 1}; negative ids"
            f"{'' if pad_id is None else ' and pad_id'} are padding).",
            id=g.indices[position],
            position=position,
        )
    if k == 0:
        return RowSparse(ids, jnp.zeros_like(g.values)), s

    rows, slot = _dedup(jnp.where(padding | too_big, num_rows, ids), num_rows)
    # Duplicates are summed in the wider of the gradient's and accumulator's
    # dtypes, then rounded once to the gradient's dtype: the row gradient a
    # dense gradient of the same lookups would hold.
    with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
        compute_dtype = jnp.promote_types(g.values.dtype, s.dtype)
    summed = jax.ops.segment_sum(g.values.astype(compute_dtype), slot, num_segments=k)
    live = _per_row(rows < num_rows, g.values.ndim)
    summed = jnp.where(live, summed.astype(g.values.dtype), jnp.zeros((), g.values.dtype))

    # Dead slots read a stand-in accumulator of 1, so their update is 0 / (1 + ...)
    # = 0 rather than 0 / 0; their writes are dropped.
    s_rows = s.at[rows].get(mode="fill", fill_value=1, unique_indices=True)
    sq = squared_magnitude(summed, s.dtype)
    s_rows = s_rows + (_row_mean(sq) if row_wise else sq)
    s = s.at[rows].set(s_rows, mode="drop", unique_indices=True)
    denominator_rows = _per_row(s_rows, summed.ndim) if row_wise else s_rows
    u = adagrad_direction(summed, denominator_rows, eps, eps_root, tau=tau)
    return RowSparse(rows, u), s


def _check_pad_id(fn: str, pad_id: Any) -> None:
    if pad_id is None or isinstance(pad_id, jax.Array):
        return  # A JAX array may be traced (inject_hyperparams): unchecked.
    if isinstance(pad_id, np.ndarray) and pad_id.ndim == 0:
        pad_id = pad_id.item()
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
        raise TypeError(f"{fn}(pad_id={pad_id!r}): pad_id must be an integer row id or None.")
    if not 0 <= pad_id <= _INT32_MAX:
        raise ValueError(
            f"{fn}(pad_id={pad_id!r}): pad_id must be a row id in [0, 2**31) or"
            " None; negative ids are always padding and need no pad_id."
        )


def _check_flags(fn: str, row_wise: Any, pad_id: Any, out_of_range: Any) -> None:
    if not isinstance(row_wise, (bool, np.bool_)):
        raise TypeError(f"{fn}(row_wise={row_wise!r}): row_wise must be True or False.")
    _check_pad_id(fn, pad_id)
    if out_of_range not in _OUT_OF_RANGE_MODES:
        raise ValueError(
            f"{fn}(out_of_range={out_of_range!r}): out_of_range must be 'drop' or"
            " 'error'."
        )


@_validation.checked_arguments
def scale_by_sparse_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
) -> optax.GradientTransformation:
    r"""`scale_by_adagrad` that also takes `RowSparse` gradients for tables.

    Dense leaves get exactly `scale_by_adagrad`'s result. For a `RowSparse`
    leaf g of a table with V rows, at each step::

        live ids  = ids i with 0 <= i < V, i != pad_id          (others skipped)
        g_r       = sum of g.values[j] over j with g.indices[j] == r   (summed first)
        G_r      <- G_r + |g_r|^2                                (touched rows only)
        u_r       = g_r / (sqrt(G_r + eps_root) + eps)           (0 where the root is 0)

    and the update is ``RowSparse(rows, u)``, one entry per distinct live id
    (the other k - #distinct entries have out-of-range ids and zero values).
    A row no id touches keeps its G and gets no update: exactly what a dense
    gradient that is 0 on that row gives. With ``row_wise=True`` G holds one
    number per row (leading-axis entry) of every leaf and
    ``G_r <- G_r + mean(|g_r|^2)`` over the row, cutting the state of a V x D
    table from V * D to V numbers; the update is ``g_r / (sqrt(G_r +
    eps_root) + eps)`` with G_r shared by the row.

    Deduplication has a fixed size (k slots for k ids: a few rounds of hashing
    into a 4k-bucket table, then a segment sum), so it jit-compiles once per k
    and never leaves the device; the update lists the distinct ids in order
    of first appearance. Only the touched rows of G are read and written.

    Args:
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added to G under the square root (>= 0). Default 0.
      accumulator_dtype: real floating dtype of G. Default None: float32 for
        bfloat16/float16 tables, the real counterpart for complex ones, the
        table's dtype otherwise.
      row_wise: keep one accumulator entry per row instead of per coordinate.
        Default False.
      pad_id: a row id to treat as padding (skipped) besides the negative ids.
        Default None.
      out_of_range: what ids >= V do. ``"drop"`` (default): they are skipped,
        like padding; no other row changes. ``"error"``: a
        `jax.experimental.checkify` check fails naming the first such id, its
        position and the leaf. Eager calls raise at once; under `jax.jit` run
        the step through ``checkify.checkify`` and call ``err.throw()``
        (without it, tracing fails saying the check was not functionalized).

    Returns:
      An `optax.GradientTransformation` whose state is a `ScaleByAdagradState`;
      its ``sum_of_squares`` has each parameter's shape, or ``shape[:1]`` with
      ``row_wise=True``.

    Raises:
      ValueError / TypeError: at construction for invalid arguments; at trace
        time for a RowSparse whose ids are not integers or whose rows do not
        match the table, or for trees that differ from the state's (naming the
        path).

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_sparse_adagrad(eps=0.0)
      >>> state = tx.init(jnp.zeros((4, 2)))
      >>> g = adagrad_jax.RowSparse(
      ...     jnp.array([3, 1, 3]), jnp.array([[1.0, 0.0], [4.0, 0.0], [2.0, 0.0]]))
      >>> u, state = tx.update(g, state)
      >>> u.todense(4)      # row 3: g = 1 + 2 = 3 and 3 / sqrt(9) = 1
      Array([[0., 0.],
             [1., 0.],
             [0., 0.],
             [1., 0.]], dtype=float32)
      >>> state.sum_of_squares[:, 0]
      Array([ 0., 16.,  0.,  9.], dtype=float32)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.

    Differences from other libraries:
      ``torch.optim.Adagrad`` with a sparse gradient coalesces duplicates the
      same way; it has no row-wise mode and no padding ids (``nn.Embedding``'s
      ``padding_idx`` gives those rows a zero gradient instead).
    """
    fn = "scale_by_sparse_adagrad"
    _validation.check_number(fn, "initial_accumulator_value", initial_accumulator_value)
    _validation.check_number(fn, "eps", eps)
    _validation.check_number(fn, "eps_root", eps_root)
    accumulator_dtype = _validation.check_float_dtype(fn, "accumulator_dtype", accumulator_dtype)
    _check_flags(fn, row_wise, pad_id, out_of_range)
    return _scale_by_sparse_adagrad(
        fn, initial_accumulator_value, eps, eps_root, accumulator_dtype,
        bool(row_wise), pad_id, out_of_range,
    )


def _scale_by_sparse_adagrad(
    fn, initial_accumulator_value, eps, eps_root, accumulator_dtype, row_wise, pad_id,
    out_of_range,
) -> optax.GradientTransformation:

    def init_fn(params):
        if row_wise:
            params = jax.tree.map(
                lambda p: jax.ShapeDtypeStruct(p.shape[:1], p.dtype, sharding=_row_sharding(p)),
                params,
            )
        return ScaleByAdagradState(
            sum_of_squares=init_sum_of_squares(
                fn, params, initial_accumulator_value, accumulator_dtype
            )
        )

    def update_fn(updates, state, params=None):
        _validation.check_same_structure(
            fn, "updates", _values_view(updates), "state.sum_of_squares", state.sum_of_squares
        )
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_row_sparse)
        sums = treedef.flatten_up_to(state.sum_of_squares)
        # Row-wise accumulators have no row shape; check rows against the
        # parameters instead, when they are given.
        tables = treedef.flatten_up_to(params) if row_wise and params is not None else (
            [None] * len(sums))
        new_updates, new_sums = [], []
        for (path, g), s, p in zip(leaves, sums, tables):
            where = _path(path)
            if _is_row_sparse(g):
                if s.ndim < 1:
                    raise ValueError(
                        f"{fn}: {where} is a RowSparse but its parameter is a"
                        " scalar; only tables (arrays with a row axis) take row"
                        " gradients."
                    )
                row_shape = s.shape[1:] if not row_wise else (
                    None if p is None else jnp.shape(p)[1:])
                _check_row_sparse(fn, where, g, row_shape)
                u, s = _sparse_leaf(
                    fn, where, g, s, eps=eps, eps_root=eps_root,
                    tau=initial_accumulator_value, row_wise=row_wise, pad_id=pad_id, out_of_range=out_of_range,
                )
            else:
                if row_wise and tuple(s.shape) != tuple(jnp.shape(g)[:1]):
                    raise ValueError(
                        f"{fn}(row_wise=True): {where} has shape {jnp.shape(g)} but"
                        f" its row-wise accumulator has shape {s.shape}."
                    )
                u, s = _dense_leaf(
                    g, s, eps=eps, eps_root=eps_root, tau=initial_accumulator_value,
                    row_wise=row_wise
                )
            new_updates.append(u)
            new_sums.append(s)
        return (
            jax.tree.unflatten(treedef, new_updates),
            ScaleByAdagradState(sum_of_squares=jax.tree.unflatten(treedef, new_sums)),
        )

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# on_row_values, sparse_adagrad
# ----------------------------------------------------------------------------

def on_row_values(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs a stateless optax transform on the values of `RowSparse` updates.

    ``inner`` sees the updates with each `RowSparse` replaced by its values
    (shape (k, ...)); the row ids are put back afterwards. Dense leaves pass to
    ``inner`` unchanged. Use it for transforms that act element by element or
    on the whole update and keep no per-coordinate state: ``optax.scale``,
    ``optax.scale_by_learning_rate`` (constant or schedule),
    ``optax.scale_by_schedule``, ``optax.clip``. (A global norm over a
    row-sparse gradient counts duplicate ids separately: deduplicate first,
    e.g. place ``optax.clip_by_global_norm`` after `scale_by_sparse_adagrad`.)

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
        new_values, state = inner.update(_values_view(updates), state, params)
        updates = jax.tree.map(
            lambda u, v: RowSparse(u.indices, v) if _is_row_sparse(u) else v,
            updates,
            new_values,
            is_leaf=_is_row_sparse,
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _sparse_coupled_weight_decay(fn: str, weight_decay: Any) -> optax.GradientTransformation:
    """`optax.add_decayed_weights` for dense leaves; refuses RowSparse leaves.

    None and a Python 0 give `optax.identity()` (both have an empty state). A
    JAX value (traced under inject_hyperparams) cannot be proven 0, so with it
    a RowSparse leaf is refused too.
    """
    if weight_decay is None or _validation.is_zero_constant(weight_decay):
        return optax.identity()
    inner = optax.add_decayed_weights(weight_decay)

    def update_fn(updates, state, params=None):
        for path, leaf in jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_row_sparse)[0]:
            if _is_row_sparse(leaf):
                raise ValueError(
                    f"{fn}(weight_decay={weight_decay!r}): {_path(path)} is a"
                    " RowSparse gradient, but coupled weight decay adds"
                    " weight_decay * w to every row of the table, which a"
                    " row-sparse step cannot do (torch.optim.Adagrad refuses it"
                    " too). Leave weight_decay=None for tables (split the tree"
                    " with optax.multi_transform), or add an L2 term on the"
                    " looked-up rows to the loss."
                )
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update_fn)


@_validation.checked_arguments
def sparse_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
) -> optax.GradientTransformation:
    r"""`adagrad` that also takes `RowSparse` gradients for embedding tables.

    For dense leaves this is `adagrad_jax.adagrad` to the last bit. For a
    `RowSparse` gradient of a V-row table, at step t = 1, 2, ...
    (count = t - 1)::

        g_r   = sum of the values whose id is r        (ids < 0, >= V or pad_id skipped)
        G_r  <- G_r + |g_r|^2                          (rows r touched this step)
        u_r   = -lr(count) * g_r / (sqrt(G_r + eps_root) + eps)   (0 where the root is 0)

    and the update comes back as ``RowSparse(rows, u)``: apply it with
    `adagrad_jax.apply_updates`. Untouched rows keep their G and do not move,
    which is what the dense rule does with a gradient that is 0 there, so
    training with row gradients gives the dense result. Under `jax.jit` with
    the parameters and state donated, a step reads and writes only the touched
    rows, in place: O(k * D) for k ids. ``row_wise=True`` keeps one G per row,
    ``G_r <- G_r + mean(|g_r|^2)``, a factor D less state.

    This is ``optax.chain(coupled weight decay or identity,
    scale_by_sparse_adagrad(...), on_row_values(optax.scale_by_learning_rate(
    learning_rate)))``: its state has the structure of `adagrad`'s, so the two
    can read each other's checkpoints (without ``row_wise``).

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added inside the square root (>= 0). Default 0.
      weight_decay: coupled L2 coefficient for dense leaves (>= 0), or None.
        Default None (no decay; unlike `adagrad`'s default 0.0, None stays
        static under `optax.inject_hyperparams`). Any value but None or a
        Python 0 raises ValueError when a RowSparse leaf arrives: decay would
        touch every row of the table.
      accumulator_dtype: real floating dtype of G. Default None (float32 for
        bfloat16/float16 parameters, the parameter's dtype otherwise).
      row_wise: one accumulator entry per row (leading-axis entry) of every
        leaf. Default False.
      pad_id: a row id treated as padding, besides negative ids. Default None.
      out_of_range: ``"drop"`` (default) skips ids >= V; ``"error"`` fails a
        `jax.experimental.checkify` check naming the id (see
        `scale_by_sparse_adagrad`).

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import adagrad_jax
      >>> params = {"table": jnp.zeros((5, 2)), "w": jnp.ones(2)}
      >>> tx = adagrad_jax.sparse_adagrad(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> grads = {"table": adagrad_jax.RowSparse(jnp.array([4, 4, -1]), jnp.ones((3, 2))),
      ...          "w": jnp.array([2.0, 0.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> params = adagrad_jax.apply_updates(params, updates)
      >>> params["table"][4], params["w"]      # first step: -lr * sign(g)
      (Array([-0.1, -0.1], dtype=float32), Array([0.9, 1. ], dtype=float32))

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.
    """
    fn = "sparse_adagrad"
    _validation.check_number(fn, "learning_rate", learning_rate, allow_schedule=True)
    _validation.check_number(fn, "initial_accumulator_value", initial_accumulator_value)
    _validation.check_number(fn, "eps", eps)
    _validation.check_number(fn, "eps_root", eps_root)
    if weight_decay is not None:
        _validation.check_number(fn, "weight_decay", weight_decay)
    accumulator_dtype = _validation.check_float_dtype(fn, "accumulator_dtype", accumulator_dtype)
    _check_flags(fn, row_wise, pad_id, out_of_range)
    return optax.chain(
        _sparse_coupled_weight_decay(fn, weight_decay),
        _scale_by_sparse_adagrad(
            fn, initial_accumulator_value, eps, eps_root, accumulator_dtype,
            bool(row_wise), pad_id, out_of_range,
        ),
        on_row_values(optax.scale_by_learning_rate(learning_rate)),
    )


# ----------------------------------------------------------------------------
# apply_updates
# ----------------------------------------------------------------------------

def apply_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
    """`optax.apply_updates` that also scatters `RowSparse` updates into tables.

    A dense leaf becomes ``(p + u).astype(p.dtype)``, as in optax. A RowSparse
    update adds ``values[i]`` to row ``indices[i]`` of its table (duplicates
    add up; the values are cast to the table's dtype); negative ids and ids
    >= the table's row count are dropped. Under ``jax.jit(step,
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
    fn = "apply_updates"
    _validation.check_same_structure(
        fn, "updates", _values_view(updates), "params", params
    )

    def leaf(path, p, u):
        if p is None:
            return None
        if not _is_row_sparse(u):
            return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
        where = _path(path)
        if jnp.ndim(p) < 1:
            raise ValueError(
                f"{fn}: {where} is a RowSparse but its parameter is a scalar;"
                " only tables (arrays with a row axis) take row updates."
            )
        _check_row_sparse(fn, where, u, jnp.shape(p)[1:])
        num_rows = jnp.shape(p)[0]
        _check_row_count(fn, where, num_rows, u.indices.shape[0])
        ids = _clean_ids(_as_int32_ids(u.indices), num_rows)
        return p.at[ids].add(u.values.astype(p.dtype), mode="drop")

    return jax.tree_util.tree_map_with_path(
        leaf, params, updates, is_leaf=lambda x: x is None
    )


# ----------------------------------------------------------------------------
# value_and_row_grad
# ----------------------------------------------------------------------------

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
    look up a zero row. Padding ids come back as -1 in the gradient, so the
    optimizer skips them; out-of-range ids come back unchanged, so
    ``sparse_adagrad(out_of_range="error")`` can report them.

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
    fn = "value_and_row_grad"
    if not callable(fun):
        raise TypeError(f"{fn}(fun={fun!r}): fun must be a callable returning a scalar loss.")
    if not isinstance(has_aux, (bool, np.bool_)):
        raise TypeError(f"{fn}(has_aux={has_aux!r}): has_aux must be True or False.")
    _check_pad_id(fn, pad_id)
    grad_fn = jax.value_and_grad(fun, has_aux=has_aux)

    def lookup_ids(path, ids, table):
        """(ids for the gradient, zero-filling lookup) for one table."""
        where = f"ids{jax.tree_util.keystr(path)}"
        if not hasattr(table, "shape") or jnp.ndim(table) < 1:
            raise ValueError(
                f"{fn}: {where} is an id array, but params{jax.tree_util.keystr(path)}"
                f" is {_describe(table)}, not a table (an array with a row axis)."
            )
        ids = _as_array(ids)
        if not _is_index_dtype(ids.dtype):
            raise TypeError(f"{fn}: {where} is {_describe(ids)}; ids must be integers.")
        num_rows = table.shape[0]
        _check_row_count(fn, f"params{jax.tree_util.keystr(path)}", num_rows, ids.size)
        ids = _as_int32_ids(ids)
        padding = ids < 0
        if pad_id is not None:
            padding = padding | (ids == jnp.asarray(pad_id).astype(jnp.int32))
        safe = jnp.where(padding | (ids >= num_rows), num_rows, ids)
        rows = table.at[safe].get(mode="fill", fill_value=0)
        return jnp.where(padding, -1, ids), rows

    def wrapped(params, ids, *args, **kwargs):
        try:
            pairs = jax.tree_util.tree_map_with_path(
                lambda path, i, p: None if i is None else lookup_ids(path, i, p),
                ids, params, is_leaf=lambda x: x is None,
            )
            looked_up = jax.tree.map(
                lambda i, p, pair: p if i is None else pair[1],
                ids, params, pairs, is_leaf=lambda x: x is None,
            )
        except ValueError as e:
            if fn in str(e):
                raise
            raise ValueError(
                f"{fn}: ids must mirror params, with an integer id array at each"
                f" table and None at every other leaf or subtree ({e})"
            ) from None
        value, row_grads = grad_fn(looked_up, *args, **kwargs)
        grads = jax.tree.map(
            lambda i, g, pair: g if i is None else RowSparse(
                pair[0].reshape(-1), g.reshape((-1,) + g.shape[pair[0].ndim:])
            ),
            ids, row_grads, pairs, is_leaf=lambda x: x is None,
        )
        return value, grads

    return wrapped


__all__ = [
    "RowSparse",
    "apply_updates",
    "on_row_values",
    "scale_by_sparse_adagrad",
    "sparse_adagrad",
    "value_and_row_grad",
]
