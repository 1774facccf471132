"""Shardings as types: what the row machinery and `init` need from JAX's sharding API.

On a mesh whose axes are ``AxisType.Explicit`` (the default of `jax.make_mesh`)
every traced array carries its sharding in its type, and operations whose
output sharding is ambiguous, such as a gather from a row-sharded table with
data-parallel ids, must be told what they give. The row machinery does not
spell out the collectives itself: it runs each row gather and scatter under
`jax.sharding.auto_axes`, where XLA's SPMD partitioner turns it into a masked
local gather (or scatter) plus collectives over the ids and their rows (see
`adagrad_jax.sharding`'s module docstring for the measured alternatives), and
declares the result's sharding: the table's for scatters, the ids' for gathers.
On meshes with Auto axes, and without a mesh, these helpers do nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def typed_sharding(x: Any) -> NamedSharding | None:
    """The sharding in the type of a traced or concrete array on an Explicit mesh, else None."""
    try:
        sharding = jax.typeof(x).sharding
    except (TypeError, AttributeError):
        return None
    mesh = getattr(sharding, "mesh", None)
    if not isinstance(sharding, NamedSharding) or mesh is None or mesh.empty:
        return None
    if not any(t == AxisType.Explicit for t in mesh.axis_types):
        return None
    return sharding


def explicit_mesh(*arrays: Any) -> Any:
    """The abstract mesh of the first array typed on an Explicit mesh, or None."""
    for x in arrays:
        sharding = typed_sharding(x)
        if sharding is not None:
            return sharding.mesh
    return None


def spec_of(x: Any, ndim: int | None = None) -> PartitionSpec:
    """The typed partition spec of `x`, padded with None to `ndim` entries (P() if untyped)."""
    sharding = typed_sharding(x)
    spec = tuple(sharding.spec) if sharding is not None else ()
    ndim = len(spec) if ndim is None else ndim
    spec = spec[:ndim] + (None,) * max(0, ndim - len(spec))
    return PartitionSpec(*spec)


def rows_spec(ids: Any, ndim: int) -> PartitionSpec:
    """The spec of rows looked up by `ids`: the ids' spec, then None for each row axis."""
    ids_spec = tuple(spec_of(ids, jax.numpy.ndim(ids)))
    return PartitionSpec(*(ids_spec + (None,) * (ndim - len(ids_spec))))


def partitioned(
    fun: Callable[..., Any], args: Sequence[Any], out_specs: Any, *, like: Sequence[Any]
) -> Any:
    """``fun(*args)``; on an Explicit mesh (found on `like`) under `auto_axes`.

    `out_specs` is a pytree of `PartitionSpec` matching ``fun``'s output: the
    sharding its result must have in the caller's (Explicit) types.
    """
    mesh = explicit_mesh(*like)
    if mesh is None:
        return fun(*args)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fun, out_sharding=out_specs)(*args)


def tie_to(out: Any, source: Any) -> Any:
    """`out`, made to depend on `source` for `jax.jit` (not for XLA: no copy, no op).

    `jax.jit` drops arguments its outputs do not use and then places the
    outputs on one device, which an Explicit-typed output (a state leaf
    created with its parameter's sharding) refuses. An optimization barrier
    over both keeps the parameter an argument, so ``jax.jit(tx.init)(params)``
    works without a `jax.set_mesh` context.
    """
    if typed_sharding(source) is None or not isinstance(source, jax.core.Tracer):
        return out
    return lax.optimization_barrier((out, source))[0]


def _explicit_sharding(x: Any) -> Any:
    """The sharding of `x` if it is split over Explicit mesh axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or sharding.mesh.empty:
        return None
    if all(axis is None for axis in sharding.spec):
        return None
    return sharding


def replicated(x: jax.Array) -> jax.Array:
    """`x` gathered onto every device of its mesh (a no-op unless split over Explicit axes).

    Statistics that every device holds whole (matrix blocks, SM3's vectors) are
    replicated: what feeds them is gathered first; with Auto axes (or one
    device) XLA places the values itself.
    """
    sharding = _explicit_sharding(x)
    if sharding is None:
        return x
    return jax.sharding.reshard(
        x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    )


def sharded_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """`x` split as `like` is over Explicit mesh axes (a no-op otherwise)."""
    sharding = _explicit_sharding(like)
    return x if sharding is None else jax.sharding.reshard(x, sharding)


def _row_sharding(p: Any) -> Any:
    """The sharding of a row-wise accumulator for a parameter placed like `p`."""
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec)[:1]
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return None


def row_like(p: Any) -> Any:
    """What a row-wise accumulator for `p` is shaped and placed like (``p.shape[:1]``).

    A `jax.ShapeDtypeStruct` with the row part of `p`'s sharding; under
    `jax.jit` on an Explicit mesh, an array typed with it and tied to `p`.
    """
    typed = typed_sharding(p)
    if isinstance(p, jax.core.Tracer) and typed is not None:
        spec = jax.sharding.PartitionSpec(*tuple(spec_of(p, p.ndim))[:1])
        rows = jnp.zeros(
            p.shape[:1], p.dtype, out_sharding=jax.sharding.NamedSharding(typed.mesh, spec)
        )
        return tie_to(rows, p)
    return jax.ShapeDtypeStruct(p.shape[:1], p.dtype, sharding=_row_sharding(p))
