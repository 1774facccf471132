"""Placement of tables over a mesh: `propose_placement`, `TableWise` and `state_shardings`.

The public module `adagrad_jax.sharding` explains how ids and rows travel.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adagrad_jax._src.core import checks
from adagrad_jax._src.tables.table_wise import check_mesh_axes


def _axes_of(spec: PartitionSpec) -> list[str]:
    names: list[str] = []
    for entry in spec:
        if entry is None:
            continue
        names.extend(entry if isinstance(entry, tuple) else (entry,))
    return names


def _the_mesh(caller: str, leaves: list[tuple[Any, Any]]) -> Any:
    meshes = []
    for path, leaf in leaves:
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            meshes.append((path, sharding.mesh))
    if not meshes:
        raise ValueError(
            f"{caller}: no parameter has a NamedSharding. Place the parameters on a mesh"
            " first (jax.device_put(params, shardings), or jax.ShapeDtypeStructs with"
            " sharding=...), e.g. with adagrad_jax.propose_placement."
        )
    path0, mesh = meshes[0]
    for path, other in meshes[1:]:
        if (
            other.axis_names != mesh.axis_names
            or other.shape != mesh.shape
            or other.devices.tolist() != mesh.devices.tolist()
        ):
            raise ValueError(
                f"{caller}: params{jax.tree_util.keystr(path)} is on mesh {other}, but"
                f" params{jax.tree_util.keystr(path0)} is on {mesh}; one SPMD program"
                " needs every parameter on the same mesh."
            )
    return mesh


def state_shardings(tx: optax.GradientTransformation, params: optax.Params) -> Any:
    """The shardings of ``tx.init(params)``'s leaves, derived from the parameters'.

    Every state leaf made from a parameter gets that parameter's placement
    (a per-coordinate accumulator the parameter's spec; a row-wise (V,)
    accumulator of a ``P("data", None)`` table gets ``P("data")``); counters,
    scalars and statistics of other shapes are replicated. The result has the
    structure of the state, so it serves as ``out_shardings`` of a jitted
    ``init`` (the state is then created in place on every device, never on one
    device first) and as the target of `jax.device_put`. It works for every
    optimizer of the package (and for optax's own), on meshes with Explicit
    and with Auto axes: the shardings are read from the types of an abstract
    ``init`` traced on an Explicit copy of the mesh, where each operation
    carries its input's sharding through.

    Args:
      tx: the optimizer.
      params: the parameters: arrays or `jax.ShapeDtypeStruct`s whose
        ``sharding`` is a `NamedSharding` (leaves with another or no sharding
        count as replicated on the same mesh).

    Returns:
      A tree like ``jax.eval_shape(tx.init, params)`` with a `NamedSharding`
      on the parameters' mesh at every leaf.

    Raises:
      ValueError: if no parameter has a `NamedSharding`, if they use different
        meshes, or if a spec names an axis the mesh lacks (naming the path).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> import adagrad_jax
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> table = jax.ShapeDtypeStruct((8, 4), jnp.float32,
      ...                              sharding=NamedSharding(mesh, P("data", None)))
      >>> tx = adagrad_jax.sparse_adagrad(0.1, row_wise=True)
      >>> adagrad_jax.state_shardings(tx, {"t": table})[1].sum_of_squares["t"].spec
      P('data',)
    """
    caller = "state_shardings"
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"{caller}(tx={tx!r}): tx must be an optax.GradientTransformation (the optimizer"
            " whose state to place), such as adagrad_jax.adagrad(0.1)."
        )
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    mesh = _the_mesh(caller, leaves)
    explicit = Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names)
    )

    def typed(path, leaf):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            leaf = np.asarray(leaf)
        sharding = getattr(leaf, "sharding", None)
        spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
        check_mesh_axes(
            caller, f"params{jax.tree_util.keystr(path)}'s sharding {spec}", _axes_of(spec), mesh
        )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(explicit, spec))

    abstract = jax.tree_util.tree_map_with_path(typed, params)
    with jax.sharding.use_abstract_mesh(explicit.abstract_mesh):
        shapes = jax.eval_shape(tx.init, abstract)

    def placed(leaf):
        sharding = getattr(leaf, "sharding", None)
        spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(placed, shapes)


TABLE_WISE = "table_wise"


@dataclasses.dataclass(frozen=True)
class TableWise:
    """`propose_placement`'s mark for a table to place whole on one device.

    Not a sharding: one SPMD program needs every operand on the same devices,
    and a `NamedSharding` cannot say "only device 3". Tables marked
    ``TableWise`` are stacked instead, with `stack_tables` (on `mesh`, along
    `axis`), into one array whose row blocks are the devices of `axis`, each
    holding whole tables.

    Example:
      >>> import jax
      >>> from adagrad_jax.sharding import TableWise
      >>> TableWise(jax.make_mesh((1,), ("data",)), "data")
      TableWise(axis='data')
    """

    mesh: Mesh
    axis: str | tuple[str, ...]

    def __repr__(self) -> str:
        return f"TableWise(axis={self.axis!r})"


def propose_placement(
    params: optax.Params,
    mesh: Mesh,
    *,
    axis: str | tuple[str, ...] = "data",
    replicate_below_bytes: int = 1 << 20,
    table_wise_below_bytes: int = 0,
    overrides: Mapping[str, PartitionSpec | str] | None = None,
) -> Any:
    """Proposes a placement for every parameter: replicated, table-wise or row-sharded.

    A leaf with a row axis and more than one column (an embedding table) is

    * replicated, ``P()``, below `replicate_below_bytes` (small tables and,
      whatever their size, leaves that are not tables, such as the dense
      tower): reading them costs nothing and their gradients are all-reduced;
    * table-wise, `TableWise`, from `replicate_below_bytes` up to (not
      including) `table_wise_below_bytes`: placed whole on one device of
      `axis`, by stacking all such tables with `stack_tables` (off by
      default: `table_wise_below_bytes` = 0);
    * row-sharded, ``P(axis, None, ...)``, from the larger of the two
      thresholds up: each device of `axis` holds rows / n of it and of its
      optimizer state.

    Entries of `overrides` (keyed by the path as `jax.tree_util.keystr` writes
    it, e.g. ``"['user']"``) replace the proposal for those leaves: a
    `PartitionSpec`, or the string ``"table_wise"``.

    Args:
      params: the parameters (arrays or `jax.ShapeDtypeStruct`s: only shapes
        and dtypes are read).
      mesh: the `jax.sharding.Mesh`.
      axis: the mesh axis (or tuple of axes) that splits table rows (and
        holds the blocks of table-wise tables). Default ``"data"``.
      replicate_below_bytes: tables smaller than this are replicated.
        Default 1 MiB.
      table_wise_below_bytes: tables of at least `replicate_below_bytes` and
        less than this are placed table-wise. Default 0 (none).
      overrides: ``{path: PartitionSpec or "table_wise"}`` for leaves to
        place by hand.

    Returns:
      A tree like `params` of `NamedSharding`s on `mesh` (for `jax.device_put`
      or ``out_shardings``), with a `TableWise` at each table to place
      table-wise: take those tables out of the tree and stack them with
      ``stack_tables(tables, mesh, axis)``.

    Raises:
      ValueError: for an axis the mesh lacks (with "Did you mean"), an
        override whose path is not a leaf of `params` or whose value is
        neither a PartitionSpec nor "table_wise", "table_wise" for a scalar,
        or a table to row-shard whose rows do not divide evenly over `axis`
        (pad it, replicate it, place it table-wise, or override it).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import adagrad_jax
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> params = {"user": jax.ShapeDtypeStruct((1 << 20, 16), jnp.float32),
      ...           "country": jnp.zeros((200, 16)), "w": jnp.zeros(16)}
      >>> placement = adagrad_jax.propose_placement(params, mesh)
      >>> {name: s.spec for name, s in placement.items()}
      {'country': P(), 'user': P('data', None), 'w': P()}
      >>> params["shop"] = jax.ShapeDtypeStruct((1 << 16, 16), jnp.float32)   # 4 MiB
      >>> placement = adagrad_jax.propose_placement(params, mesh, table_wise_below_bytes=1 << 24)
      >>> {name: getattr(s, "spec", s) for name, s in placement.items()}
      {'country': P(), 'shop': TableWise(axis='data'), 'user': P('data', None), 'w': P()}
    """
    caller = "propose_placement"
    checks.check_integer(caller, "replicate_below_bytes", replicate_below_bytes, low=0)
    checks.check_integer(caller, "table_wise_below_bytes", table_wise_below_bytes, low=0)
    axes = axis if isinstance(axis, tuple) else (axis,)
    check_mesh_axes(caller, f"axis={axis!r}", axes, mesh)
    parts = int(np.prod([mesh.shape[a] for a in axes]))
    overrides = dict(overrides or {})
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    for key, spec in overrides.items():
        if key not in paths:
            close = difflib.get_close_matches(key, sorted(paths), 1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{caller}: overrides names {key!r}, which is not a leaf of params (leaves:"
                f" {sorted(paths)}).{hint}"
            )
        if isinstance(spec, str):
            if spec != TABLE_WISE:
                raise ValueError(
                    f"{caller}: overrides[{key!r}] = {spec!r}; give a PartitionSpec or the"
                    f" string {TABLE_WISE!r}."
                )
            continue
        check_mesh_axes(
            caller, f"overrides[{key!r}] = {spec}", _axes_of(PartitionSpec(*spec)), mesh
        )

    def place(path, leaf):
        key = jax.tree_util.keystr(path)
        shape = tuple(np.shape(leaf))
        if overrides.get(key) == TABLE_WISE:
            if not shape:
                raise ValueError(
                    f"{caller}: overrides[{key!r}] = {TABLE_WISE!r}, but params{key} is a"
                    " scalar; only tables (arrays with a row axis) can be stacked."
                )
            return TableWise(mesh, axis)
        if key in overrides:
            return NamedSharding(mesh, PartitionSpec(*overrides[key]))
        nbytes = int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
        if len(shape) < 2 or nbytes < replicate_below_bytes:
            return NamedSharding(mesh, PartitionSpec())
        if nbytes < table_wise_below_bytes:
            return TableWise(mesh, axis)
        if shape[0] % parts:
            raise ValueError(
                f"{caller}: params{key} has {shape[0]} rows, which do not divide evenly over"
                f" mesh axis {axis!r} of {parts} devices. Pad the table to"
                f" {-(-shape[0] // parts) * parts} rows (ids never reach the padding),"
                f" place it by hand with overrides={{{key!r}: P()}}, or place it whole"
                f" on one device with overrides={{{key!r}: {TABLE_WISE!r}}}."
            )
        first = axes if len(axes) > 1 else axes[0]
        return NamedSharding(mesh, PartitionSpec(first, *([None] * (len(shape) - 1))))

    return jax.tree_util.tree_map_with_path(place, params)
