"""Row ids: int32 conversion, padding and range rules, fixed-size deduplication."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adagrad_jax._src.core import checks

INT32_MAX = int(np.iinfo(np.int32).max)
_OUT_OF_RANGE_MODES = ("drop", "error")


def as_int32_ids(ids: jax.Array) -> jax.Array:
    """Row ids as int32, keeping every id's class (negative, in range, too big).

    Dtypes wider than int32 are clipped into [-1, 2**31 - 1] first, so a huge
    id stays out of range rather than wrapping round to a negative (padding)
    or small (valid) id.
    """
    dtype = jnp.dtype(ids.dtype)
    signed = jnp.issubdtype(dtype, jnp.signedinteger)
    if (signed and dtype.itemsize <= 4) or (not signed and dtype.itemsize <= 2):
        return ids.astype(jnp.int32)
    return jnp.clip(ids, -1 if signed else 0, INT32_MAX).astype(jnp.int32)


def clean_ids(ids: jax.Array, num_rows: int) -> jax.Array:
    """int32 ids with negative ones moved to `num_rows`, where mode="drop" drops them.

    (`.at[]` would otherwise count a negative id from the end of the table.)
    """
    return jnp.where(ids < 0, num_rows, ids)


def check_row_count(caller: str, where: str, num_rows: int, k: int) -> None:
    if num_rows + k > INT32_MAX:
        raise ValueError(
            f"{caller}: {where} has {num_rows} rows and {k} ids; row ids are int32, so"
            f" rows + ids must stay below 2**31."
        )


_HASH_MULTIPLIER = 0x9E3779B1  # odd, about 2**32 / golden ratio (Fibonacci hashing)
_HASH_ROUND_SALT = 0x85EBCA6B  # xor-ed in times the round number: a new hash each round


def dedup(
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

    >>> rows, slot = dedup(jnp.array([7, 3, 7, 9, 3]), 9)   # 9 is dead
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


def check_pad_id(caller: str, pad_id: Any) -> None:
    """None, or an integer row id in [0, 2**31); traced JAX scalars by dtype and shape only."""
    if pad_id is None:
        return
    try:
        checks.check_integer(caller, "pad_id", pad_id, low=0, high=INT32_MAX)
    except ValueError as e:
        if "scalar" in str(e):
            raise
        raise ValueError(
            f"{caller}(pad_id={pad_id!r}): pad_id must be a row id in [0, 2**31) or"
            " None; negative ids are always padding and need no pad_id."
        ) from None


def check_unique_rows(caller: str, unique_rows: Any) -> None:
    """None, or a concrete integer in [1, 2**31): the size of a step's compacted rows."""
    if unique_rows is None:
        return
    if checks.is_traced(unique_rows):
        raise TypeError(
            f"{caller}(unique_rows={unique_rows!r}): unique_rows sets array sizes, so it"
            " must be a Python int, not a traced value."
        )
    checks.check_integer(caller, "unique_rows", unique_rows, low=1, high=INT32_MAX)


def check_id_flags(caller: str, pad_id: Any, out_of_range: Any, unique_rows: Any) -> None:
    """Checks the arguments every row-sparse optimizer takes: pad_id, out_of_range, unique_rows."""
    check_pad_id(caller, pad_id)
    checks.check_choice(caller, "out_of_range", out_of_range, _OUT_OF_RANGE_MODES)
    check_unique_rows(caller, unique_rows)
