"""Table-wise placement: several tables stacked into one row-sharded array.

`stack_tables` and `TableLayout`, re-exported by `adagrad_jax.sharding` (whose
module docstring explains why table-wise placement stacks the tables).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adagrad_jax._src.core import checks, placement
from adagrad_jax._src.tables.ids import INT32_MAX, as_int32_ids, check_pad_id


def check_mesh_axes(caller: str, where: str, axes: Any, mesh: Any) -> None:
    """ValueError for a mesh axis name that `mesh` lacks (shared with `sharding`)."""
    for axis in axes:
        if axis not in mesh.axis_names:
            raise ValueError(
                f"{caller}: {where} names mesh axis {axis!r}, but the mesh has axes"
                f" {tuple(mesh.axis_names)}.{_suggest(axis, mesh.axis_names)}"
            )


def _suggest(name: Any, names: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(n) for n in names], 1)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """Where each table lives in an array made by `stack_tables`.

    The stacked array has ``num_rows = blocks * block_rows`` rows, sharded
    ``P(axis, None, ...)`` over the `blocks` devices of `axis`: device b
    holds rows ``[b * block_rows, (b + 1) * block_rows)``, which are whole
    tables, one after another, then zero padding. Table `name` is rows
    ``[offset(name), offset(name) + rows(name))`` (in block ``block(name)``).
    The stacked array is an ordinary row-sharded table, so
    `adagrad_jax.value_and_row_grad`, every row-sparse optimizer,
    `adagrad_jax.state_shardings` and `adagrad_jax.apply_updates` take it as
    they are: what the layout adds is the translation of per-table ids
    (`ids`, `concat_ids`, `split_rows`) and of per-table arrays (`stack`,
    `unstack`). Instances are immutable and hashable.

    Attributes:
      mesh: the mesh.
      axis: the mesh axis (or tuple of axes) along which blocks lie.
      blocks: the number of devices along `axis` (one block each).
      block_rows: rows per block.
      tables: ``(name, rows, block, offset)`` for every table, in the order
        given to `stack_tables`.
    """

    mesh: Mesh
    axis: str | tuple[str, ...]
    blocks: int
    block_rows: int
    tables: tuple[tuple[str, int, int, int], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The tables' names, in the order given to `stack_tables`."""
        return tuple(t[0] for t in self.tables)

    @property
    def num_rows(self) -> int:
        """Rows of the stacked array: ``blocks * block_rows``."""
        return self.blocks * self.block_rows

    def _entry(self, caller: str, name: Any) -> tuple[str, int, int, int]:
        for entry in self.tables:
            if entry[0] == name:
                return entry
        raise ValueError(
            f"TableLayout.{caller}: no table {name!r} in this layout (tables:"
            f" {list(self.names)}).{_suggest(name, self.names)}"
        )

    def rows(self, name: str) -> int:
        """The row count of table `name`."""
        return self._entry("rows", name)[1]

    def block(self, name: str) -> int:
        """The block (index of the device along `axis`) that holds table `name`."""
        return self._entry("block", name)[2]

    def offset(self, name: str) -> int:
        """The stacked row of table `name`'s row 0."""
        return self._entry("offset", name)[3]

    def sharding(self, ndim: int = 2) -> NamedSharding:
        """The stacked array's sharding (for `ndim` axes): ``P(axis, None, ...)``."""
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        first = axes if len(axes) > 1 else axes[0]
        return NamedSharding(self.mesh, PartitionSpec(first, *([None] * (ndim - 1))))

    def ids(self, name: str, ids: Any, *, pad_id: int | None = None) -> jax.Array:
        """Table `name`'s row ids as rows of the stacked array (int32, same shape).

        An id in ``[0, rows(name))`` (other than `pad_id`) becomes
        ``offset(name) + id``. Padding, a negative id or `pad_id`, becomes -1
        (looked up as a zero row, never trained). An id >= ``rows(name)``
        becomes ``num_rows``, which is out of range for the stacked array, so
        it follows the optimizer's ``out_of_range`` rule (dropped, or reported
        as row id ``num_rows`` with ``out_of_range="error"``) and never reaches
        another table's rows. Works on NumPy and JAX arrays, under `jax.jit`
        too; the result keeps the ids' sharding.

        Args:
          name: the table.
          ids: an integer array of any shape.
          pad_id: a row id of the table to treat as padding, besides negative
            ids (pass it here, not to `value_and_row_grad`, whose ``pad_id``
            would be a stacked row). Default None.

        Raises:
          ValueError: for a name not in the layout (with "Did you mean").
          TypeError: for ids that are not integers.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from adagrad_jax.sharding import stack_tables
          >>> mesh = jax.make_mesh((1,), ("data",))
          >>> _, layout = stack_tables({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4, 2))}, mesh)
          >>> layout.offset("b"), layout.num_rows
          (0, 7)
          >>> layout.ids("a", jnp.array([0, 2, -1, 3]))   # 3 is out of a's range
          Array([ 4,  6, -1,  7], dtype=int32)
        """
        _, rows, _, offset = self._entry("ids", name)
        check_pad_id("TableLayout.ids", pad_id)
        if not isinstance(ids, jax.Array):
            host = np.asarray(ids)
            if np.issubdtype(host.dtype, np.integer) and host.dtype.itemsize >= 4:
                # Clip on the host: without jax_enable_x64, jnp.asarray would wrap a huge
                # int64 id round into a valid row.
                low = -1 if np.issubdtype(host.dtype, np.signedinteger) else 0
                host = np.clip(host, low, INT32_MAX).astype(np.int32)
            ids = host
        ids = jnp.asarray(ids)
        if not (jnp.issubdtype(ids.dtype, jnp.integer)):
            raise TypeError(
                f"TableLayout.ids: ids of table {name!r} are {ids.dtype}{list(ids.shape)};"
                " ids must be integers."
            )
        ids32 = as_int32_ids(ids)
        padding = ids32 < 0
        if pad_id is not None:
            padding = padding | (ids32 == pad_id)
        stacked = jnp.where(ids32 >= rows, self.num_rows, ids32 + offset)
        return jnp.where(padding, -1, stacked)

    def concat_ids(self, ids_by_name: Mapping[str, Any], *, pad_id: int | None = None) -> jax.Array:
        """Several tables' ids as one id array of the stacked array, example by example.

        Each ``ids_by_name[name]`` has the batch as its first axis (shape (B,)
        or (B, f, ...)); the result is ``concatenate([layout.ids(name, ids)
        .reshape(B, -1) for each name], axis=1)``, shape (B, total), so it
        keeps a batch-sharded ``P("data", ...)`` placement. Look it up with
        `value_and_row_grad` and cut the looked-up rows back per table with
        `split_rows` (same mapping).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from adagrad_jax.sharding import stack_tables
          >>> mesh = jax.make_mesh((1,), ("data",))
          >>> _, layout = stack_tables({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4, 2))}, mesh)
          >>> layout.concat_ids({"a": jnp.array([0, 1]), "b": jnp.array([[3, 2], [0, 0]])})
          Array([[4, 3, 2],
                 [5, 0, 0]], dtype=int32)
        """
        self._check_mapping("concat_ids", ids_by_name)
        parts, batch = [], None
        for name, ids in ids_by_name.items():
            mapped = self.ids(name, ids, pad_id=pad_id)
            if mapped.ndim < 1 or (batch is not None and mapped.shape[0] != batch):
                raise ValueError(
                    f"TableLayout.concat_ids: ids of table {name!r} have shape"
                    f" {tuple(mapped.shape)}; every table's ids need the same batch axis"
                    f" first ({batch if batch is not None else 'a leading axis'})."
                )
            batch = mapped.shape[0]
            parts.append(mapped.reshape(batch, -1))
        return jnp.concatenate(parts, axis=1)

    def split_rows(self, rows: Any, ids_by_name: Mapping[str, Any]) -> dict[str, Any]:
        """Rows looked up with ``concat_ids(ids_by_name)``, cut back per table.

        `rows` has shape ``(B, total) + row_shape``; the result maps each name
        to its rows, of shape ``ids_by_name[name].shape + row_shape``. Only the
        shapes of `ids_by_name` are read (arrays or `jax.ShapeDtypeStruct`s).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from adagrad_jax.sharding import stack_tables
          >>> mesh = jax.make_mesh((1,), ("data",))
          >>> _, layout = stack_tables({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4, 2))}, mesh)
          >>> like = {"a": jnp.zeros(2, int), "b": jnp.zeros((2, 2), int)}
          >>> parts = layout.split_rows(jnp.ones((2, 3, 2)), like)
          >>> parts["a"].shape, parts["b"].shape
          ((2, 2), (2, 2, 2))
        """
        self._check_mapping("split_rows", ids_by_name)
        out, start = {}, 0
        for name, ids in ids_by_name.items():
            shape = tuple(np.shape(ids))
            width = int(np.prod(shape[1:], dtype=int))
            part = lax.slice_in_dim(rows, start, start + width, axis=1)
            out[name] = part.reshape(shape + tuple(rows.shape[2:]))
            start += width
        if start != rows.shape[1]:
            raise ValueError(
                f"TableLayout.split_rows: rows have {rows.shape[1]} lookups per example, but"
                f" the ids given make {start}; pass the mapping given to concat_ids."
            )
        return out

    def _check_mapping(self, caller: str, mapping: Any) -> None:
        if not isinstance(mapping, Mapping) or not mapping:
            raise TypeError(
                f"TableLayout.{caller}: expected a non-empty mapping of table name -> ids, got"
                f" {type(mapping).__name__}."
            )
        for name in mapping:
            self._entry(caller, name)

    def stack(self, tables: Mapping[str, Any]) -> Any:
        """Per-table arrays (tables, or their optimizer state) as one stacked array.

        Every table of the layout must be given, each with its row count
        first and one trailing shape and dtype for all (the tables, their
        per-coordinate accumulators, or their (rows,) row-wise accumulators).
        Each device receives only its block (`jax.make_array_from_callback`:
        in a multi-process run each process supplies its own blocks), with
        zeros in the padding rows. `jax.ShapeDtypeStruct`s give a
        `jax.ShapeDtypeStruct` of the stacked array, with its sharding.

        Raises:
          ValueError: for a missing or unknown table, or a wrong row count,
            trailing shape or dtype (naming the table).
        """
        caller = "TableLayout.stack"
        if not isinstance(tables, Mapping):
            raise TypeError(
                f"{caller}: expected a mapping of table name -> array, got {type(tables).__name__}."
            )
        for name in tables:
            self._entry("stack", name)
        missing = [n for n in self.names if n not in tables]
        if missing:
            raise ValueError(f"{caller}: tables {missing} of the layout are missing.")
        first = self.names[0]
        trailing = tuple(np.shape(tables[first]))[1:]
        dtype = np.dtype(tables[first].dtype)
        for name, rows, _, _ in self.tables:
            shape = tuple(np.shape(tables[name]))
            if (
                shape[:1] != (rows,)
                or shape[1:] != trailing
                or (np.dtype(tables[name].dtype) != dtype)
            ):
                raise ValueError(
                    f"{caller}: table {name!r} is {np.dtype(tables[name].dtype)}{list(shape)},"
                    f" but the layout needs {rows} rows and every table like table"
                    f" {first!r}: {dtype}[rows, {', '.join(map(str, trailing))}]."
                )
        shape = (self.num_rows, *trailing)
        sharding = self.sharding(len(shape))
        if all(isinstance(t, jax.ShapeDtypeStruct) for t in tables.values()):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        host = {name: np.asarray(t) for name, t in tables.items()}

        def block(index):
            start, stop, _ = index[0].indices(self.num_rows)
            out = np.zeros((stop - start, *trailing), dtype)
            for name, rows, _, offset in self.tables:
                lo, hi = max(start, offset), min(stop, offset + rows)
                if lo < hi:
                    out[lo - start : hi - start] = host[name][lo - offset : hi - offset]
            return out[(slice(None), *index[1:])]

        return jax.make_array_from_callback(shape, sharding, block)

    def unstack(self, stacked: Any) -> dict[str, Any]:
        """The per-table arrays of a stacked array (a table, or a state leaf of it).

        `stacked` has ``num_rows`` rows (any trailing shape: the table, a
        per-coordinate accumulator, a row-wise (num_rows,) accumulator).
        NumPy arrays give NumPy slices; JAX arrays (also under `jax.jit`)
        give arrays replicated over the mesh, for export, comparison or a
        checkpoint in another layout: each table moves to every device, so
        do not call it in a training step.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from adagrad_jax.sharding import stack_tables
          >>> mesh = jax.make_mesh((1,), ("data",))
          >>> tables = {"a": jnp.ones((3, 2)), "b": jnp.zeros((4, 2))}
          >>> stacked, layout = stack_tables(tables, mesh)
          >>> stacked.shape, layout.unstack(stacked)["a"].shape
          ((7, 2), (3, 2))
        """
        shape = tuple(np.shape(stacked))
        if not shape or shape[0] != self.num_rows:
            raise ValueError(
                f"TableLayout.unstack: expected an array with {self.num_rows} rows (the"
                f" stacked array's), got shape {shape}."
            )
        if isinstance(stacked, np.ndarray):
            return {n: stacked[o : o + r] for n, r, _, o in self.tables}

        def cut(x):
            return {n: lax.slice_in_dim(x, o, o + r) for n, r, _, o in self.tables}

        stacked = jnp.asarray(stacked)
        return placement.partitioned(
            cut, (stacked,), {n: PartitionSpec() for n in self.names}, like=(stacked,)
        )


def stack_tables(
    tables: Mapping[str, Any],
    mesh: Mesh,
    axis: str | tuple[str, ...] = "data",
    *,
    block_rows: int | None = None,
) -> tuple[Any, TableLayout]:
    """Stacks tables into one array whose devices along `axis` each hold whole tables.

    Table-wise placement in one SPMD program: the tables (one row shape and
    dtype for all) are packed into the `n` devices of `axis`, largest first,
    each into the block with the fewest rows so far (with `block_rows`
    given: into the first block with room), and stacked into an array of
    ``n * block_rows`` rows sharded ``P(axis, None, ...)``, each table
    padded with zero rows to its block's end. So every table lives whole on
    one device, and the stacked array trains as a row-sharded table: look it
    up with `adagrad_jax.value_and_row_grad` and ids from
    `TableLayout.concat_ids` (or `TableLayout.ids`), update it with any
    row-sparse optimizer (`adagrad_jax.state_shardings` places the state like
    it) and write it back with `adagrad_jax.apply_updates`; each device reads
    and writes only its own block (only ids and their rows travel, never a
    table), and an id outside its table's range never reaches another
    table's rows.

    Args:
      tables: ``{name: table}``: NumPy or fully addressable JAX arrays, or
        `jax.ShapeDtypeStruct`s (for an abstract stacked array, to plan or
        to compile), each ``(rows, ...)`` with one trailing shape and dtype.
      mesh: the `jax.sharding.Mesh`.
      axis: the mesh axis (or tuple of axes) whose devices hold the blocks.
        Default ``"data"``.
      block_rows: rows per block. Default: the fullest block's rows after
        packing (so nothing is refused).

    Returns:
      ``(stacked, layout)``: the stacked array (or `jax.ShapeDtypeStruct`) and
      its `TableLayout`.

    Raises:
      ValueError: for no tables, tables of different row shapes or dtypes, an
        axis the mesh lacks, a table with more rows than `block_rows` (naming
        the table and the block size: row-shard it instead), or tables that do
        not fit the blocks.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from adagrad_jax.sharding import stack_tables
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> tables = {"shop": jnp.ones((3, 2)), "brand": 2 * jnp.ones((2, 2))}
      >>> stacked, layout = stack_tables(tables, mesh)
      >>> stacked
      Array([[1., 1.],
             [1., 1.],
             [1., 1.],
             [2., 2.],
             [2., 2.]], dtype=float32)
      >>> layout.tables      # (name, rows, block, offset)
      (('shop', 3, 0, 0), ('brand', 2, 0, 3))
      >>> stack_tables(tables, mesh, block_rows=2)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: stack_tables: table 'shop' has 3 rows, more than a block of 2 rows ...
    """
    caller = "stack_tables"
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError(
            f"{caller}: tables must be a non-empty mapping of name -> table, got {tables!r:.80}."
        )
    axes = axis if isinstance(axis, tuple) else (axis,)
    check_mesh_axes(caller, f"axis={axis!r}", axes, mesh)
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if block_rows is not None:
        checks.check_integer(caller, "block_rows", block_rows, low=1)
    names = list(tables)
    row_counts = {}
    for name, table in tables.items():
        shape = tuple(np.shape(table))
        if not shape:
            raise ValueError(f"{caller}: table {name!r} is a scalar; tables need a row axis.")
        row_counts[name] = shape[0]
    order = sorted(names, key=lambda nm: (-row_counts[nm], names.index(nm)))
    loads = [0] * n
    where = {}
    for name in order:
        rows = row_counts[name]
        if block_rows is None:
            b = loads.index(min(loads))
        else:
            if rows > block_rows:
                first = axes if len(axes) > 1 else axes[0]
                raise ValueError(
                    f"{caller}: table {name!r} has {rows} rows, more than a block of"
                    f" {block_rows} rows (one device's share of the stacked array). Row-shard"
                    f" it instead ({PartitionSpec(first, None)}), or pass a larger block_rows."
                )
            fits = [b for b in range(n) if loads[b] + rows <= block_rows]
            if not fits:
                raise ValueError(
                    f"{caller}: the tables ({sum(row_counts.values())} rows in all) do not fit"
                    f" {n} blocks of {block_rows} rows: no block has room for table"
                    f" {name!r} ({rows} rows) after the larger ones. Pass a larger block_rows,"
                    " or None to size the blocks to fit."
                )
            b = fits[0]
        where[name] = (b, loads[b])
        loads[b] += rows
    block = block_rows if block_rows is not None else max(1, max(loads))
    total = n * block
    if total > INT32_MAX // 2:
        raise ValueError(
            f"{caller}: the stacked array would have {total} rows; row ids are int32,"
            " so keep it below 2**30 rows."
        )
    layout = TableLayout(
        mesh=mesh,
        axis=axis,
        blocks=n,
        block_rows=block,
        tables=tuple(
            (nm, row_counts[nm], where[nm][0], where[nm][0] * block + where[nm][1]) for nm in names
        ),
    )
    return layout.stack(tables), layout
