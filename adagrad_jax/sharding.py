"""Tables larger than one device: placement and optimizer-state shardings.

A table row-sharded with ``NamedSharding(mesh, P("data", None))`` trains as
one SPMD program under `jax.jit`: `adagrad_jax.value_and_row_grad` looks its
rows up, a row-sparse optimizer (`adagrad`, `sparse_adagrad`,
`proximal_adagrad`, `adagrad_da`, `ftrl`, ...) updates the touched rows of the
table's state, and `adagrad_jax.apply_updates` writes them back, on meshes
with Explicit axes (the default of `jax.make_mesh`) and with Auto axes.

How ids and rows travel. Each gather and scatter on a row-sharded table is
left to XLA's SPMD partitioner (on Explicit meshes through
`jax.sharding.auto_axes`, with the result placed like the ids): the ids of the
batch are all-gathered (4 bytes each), every device gathers the rows it owns
with a mask and an all-reduce assembles the looked-up rows (k x D); scatters
all-gather the k x D new rows and each device writes only the ones it owns.
Deduplication runs on the global ids, so an id sent by two devices is one row
update, exactly as on one device. Every collective is sized by the ids of the
step, never by the table's rows, and no device holds a table-sized
temporary. The alternative, `shard_map` with an all-to-all of (id, row) pairs
to each row's owner, moves about half the bytes in theory but, with static
shapes, must reserve room for every id on every destination (k x D per
device, the same buffer as the all-gather) and needs its own deduplication
across senders; `benchmarks/scaling.py` measures both (the figures are in the documentation's
"Scaling out" guide, docs/guide/scaling-out.md).

Many tables. `propose_placement` replicates small tables, row-shards large
ones and, on request (``table_wise_below_bytes``, or an override
``"table_wise"``), marks mid-size ones `TableWise`: placed whole on one
device. One SPMD program needs all its operands on the same devices, and a
`NamedSharding` cannot say "only device 3", so table-wise placement stacks
the tables: `stack_tables` packs them into the blocks of one array sharded
``P(axis, None)``, each device's block holding whole tables (padded with zero
rows), and returns a `TableLayout` that offsets each table's ids into the
stacked rows and cuts looked-up rows and per-table arrays back out. The
stacked array trains as the row-sharded table it is, with the machinery
above: each device reads and writes only its block, and an id outside its
table's range is mapped out of the stacked array's range, so it never
reaches another table's rows.
"""

from adagrad_jax._src.tables.placement import TableWise as TableWise
from adagrad_jax._src.tables.placement import propose_placement as propose_placement
from adagrad_jax._src.tables.placement import state_shardings as state_shardings
from adagrad_jax._src.tables.table_wise import TableLayout as TableLayout
from adagrad_jax._src.tables.table_wise import stack_tables as stack_tables

__all__ = [
    "TableLayout",
    "TableWise",
    "propose_placement",
    "stack_tables",
    "state_shardings",
]
