"""Scaling out: a row-sharded table trained with `sparse_adagrad` on 1, 2, 4 and 8 devices.

For each device count n (a simulated CPU mesh, ``("data",)`` axis, Explicit
axes) the training step `value_and_row_grad` + `sparse_adagrad` +
`apply_updates` of a rows x dim float32 table (8M x 64 in the full run) plus
its accumulator, with `ids_per_device` ids per device (4,096), is compiled
from abstract arrays (nothing table-sized is allocated) and measured:

- **memory per device** from XLA's compiled memory analysis: arguments (table,
  accumulator, ids, dense leaf), temporaries, and the ratio of the table and
  state bytes per device to (total / n) (goal: within 1.1x);
- **collective bytes per step** from the compiled HLO: the bytes of every
  all-gather, all-reduce, reduce-scatter, all-to-all and collective-permute
  result (an op inside the deduplication loop counted once; it runs 2 or 3
  rounds), and the largest one (goal: proportional to ids x dim, independent
  of the rows: shown by compiling again with twice the rows);
- **step time** (median of a few steps on real arrays, only where the table
  fits `--time-rows`): the simulated devices share the machine's cores, so
  this is for information.

It also measures how ids and rows could travel in a lookup: XLA's
partitioner (a masked gather on every row shard and an all-reduce of the k x D
rows: what adagrad_jax uses) against `shard_map` with an all-to-all of ids to
their owners and of rows back.

Run ``python -m benchmarks.scaling [--quick] [--time-rows N] [--json]``: the
device count must be set before JAX starts, so `run` executes the measurements
in a fresh interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from devtools.hlo import collectives

FULL = dict(rows=8 * 2**20, dim=64, ids_per_device=4096, time_rows=2**20, rounds=5)
QUICK = dict(rows=2**16, dim=16, ids_per_device=256, time_rows=2**16, rounds=3)
DEVICE_COUNTS = (1, 2, 4, 8)


def _train_step(tx):
    import jax.numpy as jnp

    import adagrad_jax

    def loss(rows):
        return jnp.mean((rows["t"] @ rows["w"] - 1.0) ** 2)

    def step(params, state, ids):
        value, grads = adagrad_jax.value_and_row_grad(loss)(params, {"t": ids, "w": None})
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state, value

    return step


def measure(n: int, rows: int, dim: int, ids_per_device: int) -> dict[str, Any]:
    """Compiles the sharded step on the first n devices; memory and collectives per device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adagrad_jax

    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    params = {
        "t": jax.ShapeDtypeStruct((rows, dim), jnp.float32,
                                  sharding=NamedSharding(mesh, P("data", None))),
        "w": jax.ShapeDtypeStruct((dim,), jnp.float32, sharding=NamedSharding(mesh, P())),
    }
    tx = adagrad_jax.sparse_adagrad(0.01, initial_accumulator_value=0.1)
    shardings = adagrad_jax.state_shardings(tx, params)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         jax.eval_shape(tx.init, params), shardings)
    ids = jax.ShapeDtypeStruct((n * ids_per_device,), jnp.int32,
                               sharding=NamedSharding(mesh, P("data")))
    step = jax.jit(_train_step(tx), donate_argnums=(0, 1))
    compiled = step.lower(params, state, ids).compile()
    memory = compiled.memory_analysis()
    found = collectives(compiled.as_text())
    table_and_state = 2 * rows * dim * 4
    ideal = table_and_state / n
    small = ids_per_device * 4 + dim * 4 * 2  # ids, w and its accumulator per device
    return dict(
        devices=n, rows=rows, dim=dim, ids_per_device=ids_per_device,
        argument_bytes=memory.argument_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        table_and_state_per_device_over_ideal=(memory.argument_size_in_bytes - small) / ideal,
        collective_bytes=sum(b for _, b in found),
        largest_collective_bytes=max((b for _, b in found), default=0),
        collectives=sorted({kind for kind, _ in found}),
        ids_times_dim_bytes=n * ids_per_device * dim * 4,
    )


def time_step(n: int, rows: int, dim: int, ids_per_device: int, rounds: int) -> float:
    """Median seconds of a donated sharded step on real arrays."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adagrad_jax

    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    placement = {"t": NamedSharding(mesh, P("data", None)), "w": NamedSharding(mesh, P())}
    params = jax.jit(lambda: {"t": jnp.full((rows, dim), 0.01, jnp.float32),
                              "w": jnp.ones((dim,), jnp.float32)}, out_shardings=placement)()
    tx = adagrad_jax.sparse_adagrad(0.01, initial_accumulator_value=0.1)
    state = jax.jit(tx.init, out_shardings=adagrad_jax.state_shardings(tx, params))(params)
    rng = np.random.default_rng(0)
    batches = [jax.device_put(rng.zipf(1.2, n * ids_per_device).astype(np.int32) % rows,
                              NamedSharding(mesh, P("data"))) for _ in range(rounds + 1)]
    step = jax.jit(_train_step(tx), donate_argnums=(0, 1))
    times = []
    for ids in batches:
        start = time.perf_counter()
        params, state, value = step(params, state, ids)
        value.block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def lookup_comparison(n: int, rows: int, dim: int, ids_per_device: int,
                      rounds: int) -> dict[str, Any]:
    """A lookup by XLA's partitioner against shard_map with all-to-all: bytes and time."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    k, per = ids_per_device, rows // n

    def partitioner(table, ids):
        return table.at[ids].get(mode="fill", fill_value=0, out_sharding=P("data", None))

    @partial(jax.shard_map, mesh=mesh, in_specs=(P("data", None), P("data")),
             out_specs=P("data", None))
    def all_to_all(table, ids):
        owner = ids // per
        order = jnp.argsort(owner, stable=True)
        owner_sorted = owner[order]
        counts = jnp.zeros((n,), jnp.int32).at[owner].add(1)
        slot = jnp.arange(k) - (jnp.cumsum(counts) - counts)[owner_sorted]
        # Room for every id on every owner: static shapes must allow the worst case.
        send = jnp.full((n, k), per, jnp.int32).at[owner_sorted, slot].set(
            ids[order] - owner_sorted * per)
        wanted = lax.all_to_all(send, "data", 0, 0)
        found = table.at[wanted].get(mode="fill", fill_value=0)
        back = lax.all_to_all(found, "data", 0, 0)
        return jnp.zeros((k, table.shape[1]), table.dtype).at[order].set(
            back[owner_sorted, slot])

    table = jax.device_put(jnp.arange(rows * dim, dtype=jnp.float32).reshape(rows, dim),
                           NamedSharding(mesh, P("data", None)))
    rng = np.random.default_rng(1)
    ids = jax.device_put(rng.integers(0, rows, n * k).astype(np.int32),
                         NamedSharding(mesh, P("data")))
    out = {}
    results = []
    for name, fn in (("partitioner", partitioner), ("shard_map all-to-all", all_to_all)):
        with jax.set_mesh(mesh):
            jitted = jax.jit(fn)
            compiled = jitted.lower(table, ids).compile()
            results.append(np.asarray(jitted(table, ids)))
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                jitted(table, ids).block_until_ready()
                times.append(time.perf_counter() - start)
        found = collectives(compiled.as_text())
        out[name] = dict(collective_bytes=sum(b for _, b in found),
                         kinds=sorted({kind for kind, _ in found}),
                         temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
                         median_s=statistics.median(times))
    assert np.array_equal(results[0], results[1]), "the two lookups differ"
    return out


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import jax

    assert jax.device_count() >= max(DEVICE_COUNTS), jax.devices()
    rows, dim, k = config["rows"], config["dim"], config["ids_per_device"]
    table = []
    for n in DEVICE_COUNTS:
        row = measure(n, rows, dim, k)
        doubled = measure(n, 2 * rows, dim, k)
        row["collective_bytes_2x_rows"] = doubled["collective_bytes"]
        row["temp_bytes_2x_rows"] = doubled["temp_bytes"]
        if config["time_rows"]:
            row["time_rows"] = min(rows, config["time_rows"])
            row["step_s"] = time_step(n, row["time_rows"], dim, k, config["rounds"])
        table.append(row)
    lookup = lookup_comparison(max(DEVICE_COUNTS), min(rows, 2**16), dim, k, config["rounds"])
    return dict(config=config, devices=table, lookup=lookup)


def run(quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measures in a fresh interpreter with 8 simulated CPU devices; returns the results."""
    config = {**(QUICK if quick else FULL), **overrides}
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                         + " --xla_force_host_platform_device_count=8").strip()}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--worker", json.dumps(config)],
        cwd=root, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError("benchmarks.scaling worker failed:\n" + result.stderr[-4000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:,.2f} MiB"


def markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"### Scaling out: {c['rows']:,} x {c['dim']} float32 table + accumulator,"
        f" {c['ids_per_device']:,} ids per device",
        "",
        "| devices | arguments / device | table+state vs total/n | temporaries |"
        " collective bytes / step | largest | with 2x rows | ids x dim x 4 | step (info) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["devices"]:
        step = f"{r['step_s'] * 1e3:.1f} ms ({r['time_rows']:,} rows)" if "step_s" in r else "-"
        lines.append(
            f"| {r['devices']} | {_mib(r['argument_bytes'])} |"
            f" {r['table_and_state_per_device_over_ideal']:.3f}x | {_mib(r['temp_bytes'])} |"
            f" {_mib(r['collective_bytes'])} | {_mib(r['largest_collective_bytes'])} |"
            f" {_mib(r['collective_bytes_2x_rows'])} | {_mib(r['ids_times_dim_bytes'])} |"
            f" {step} |")
    lines += ["", "Lookup on 8 devices, how ids and rows travel:", "",
              "| method | collectives | collective bytes | temporaries | median (info) |",
              "|---|---|---|---|---|"]
    for name, r in results["lookup"].items():
        lines.append(f"| {name} | {', '.join(r['kinds'])} | {_mib(r['collective_bytes'])} |"
                     f" {_mib(r['temp_bytes'])} | {r['median_s'] * 1e3:.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (tests)")
    parser.add_argument("--time-rows", type=int, default=None,
                        help="time steps on tables of at most this many rows (0: no timing)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON line instead of the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    overrides = {} if args.time_rows is None else {"time_rows": args.time_rows}
    results = run(quick=args.quick, **overrides)
    print(json.dumps(results) if args.json else markdown(results))


if __name__ == "__main__":
    main()
