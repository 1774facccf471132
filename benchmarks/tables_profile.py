"""Where the time of our bag step goes: the compiled HLO and timed variants (issue 17).

The case: 2,048 bags of 20 Zipf ids (exponent 1.2) in a 1,000,000 x 64 float32
table, the step of `benchmarks/tables.py` (``value_and_row_grad`` + ``adagrad``
+ ``apply_updates``, jit, donated), per-coordinate and row-wise. Two views:

1. **The compiled program.** Every gather, scatter, sort and while loop of the
   compiled step (the entry computation, fusions and loop bodies), with its
   result and operand shapes, the number of top-level ops of the entry
   computation, and XLA's cost analysis (bytes accessed). Ops whose shapes
   carry the 40,960 ids (or 4 x 40,960 = 163,840 hash buckets) are marked:
   they are sized by the ids, not by the distinct rows.
2. **Timed variants**, round-robin in one process, each on the same 32 id
   batches: the full steps, without a bound and with the benchmark's
   ``unique_rows``; the lookup and its backward alone; the lookup +
   a plain SGD row update; the optimizer alone (``tx.update`` + apply on a
   given `RowSparse`); the engine's pieces alone (fixed-size dedup, the
   duplicate sum, the gather, the rule's arithmetic, the scatter, the apply
   scatter-add), each at 40,960 entries as the engine runs them (dead entries
   included) and at the compacted unique rows (a static bound: the largest
   distinct count of the 32 batches, rounded up to 1,024) that a unique-row
   step would run; the prefix sum that compacts them; and a sort of the ids,
   the alternative to the hash dedup.

The variants use the library's private dedup (`adagrad_jax._src.tables.ids`)
and re-create the engine's gathers and scatters with the same arguments
(`tables/engine.py:_touched_rows`); they measure, they are not the library.

Run ``python benchmarks/tables_profile.py [--rounds N] [--bags B --bag L --vocab V]``.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/tables_profile.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from adagrad_jax._src.tables.ids import dedup
from benchmarks import _timing
from benchmarks import tables as tables_module
from devtools.models import EPS, LR, TAU

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\([^=]*?\)|\S+)\s+"
                 r"(?P<op>[\w\-]+)\((?P<args>.*)$")
_SHAPE = re.compile(r"\b(?:pred|s8|u8|s32|u32|s64|u64|f32|f64|bf16|f16)\[[\d,]*\]")
WATCHED = ("gather", "scatter", "sort", "while")


def hlo_ops(text: str) -> list[dict[str, Any]]:
    """Every gather, scatter, sort and while of a compiled module, with its shapes.

    Compiled HLO names its operands without their shapes; they are looked up
    by name (names are unique in a module). ``source`` is the JAX operation
    the op came from (its ``op_name`` metadata).
    """
    shapes: dict[str, str] = {}
    for line in text.splitlines():
        m = _OP.match(line)
        if m:
            shapes[m.group("name")] = " ".join(_SHAPE.findall(m.group("shape")))
    found, computation = [], "?"
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not _OP.match(line):
            computation = header.group("name")
            continue
        m = _OP.match(line)
        if m and m.group("op") in WATCHED:
            args = m.group("args").split(")", 1)[0]
            names = re.findall(r"%([\w.\-]+)", args)
            source = re.search(r'op_name="([^"]*)"', line)
            found.append({"computation": computation, "op": m.group("op"),
                          "result": shapes[m.group("name")],
                          "operands": ", ".join(shapes.get(n, n) for n in names),
                          "source": source.group(1) if source else ""})
    return found


def entry_op_count(text: str) -> dict[str, int]:
    """Top-level ops of the entry computation by opcode (parameters and tuples left out)."""
    counts: dict[str, int] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            inside = True
            continue
        if inside and line.startswith("}"):
            break
        m = _OP.match(line) if inside else None
        if m and m.group("op") not in ("parameter", "tuple", "get-tuple-element", "constant",
                                        "bitcast"):
            counts[m.group("op")] = counts.get(m.group("op"), 0) + 1
    return counts


def _compiled(fn: Callable, args: tuple, donate: tuple[int, ...] = ()):
    return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


def _bytes(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["bytes accessed"])
    except Exception:  # noqa: BLE001 - optional on some backends
        return None


def _case(compiled, args_for: Callable[[int], tuple], donated: list | None = None):
    """step(i): runs `compiled` on batch i's arguments; `donated` holds the donated first
    arguments, replaced by the outputs after each call."""

    def step(i: int) -> None:
        if donated is None:
            jax.block_until_ready(compiled(*args_for(i)))
            return
        out = compiled(*donated, *args_for(i))
        out = out if isinstance(out, tuple) else (out,)
        donated[:] = list(out[: len(donated)])
        jax.block_until_ready(out)

    return step


def run(vocab: int = 1_000_000, dim: int = 64, bags: int = 2048, bag: int = 20,
        rounds: int = 30, seed: int = 0) -> dict[str, Any]:
    b = tables_module.make_batches(f"{bags} bags of {bag}", bags, bag, vocab, dim, seed + 1)
    k = bags * bag
    table_np = 0.01 * np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)
    ids = [jnp.asarray(i) for i in b.ids_np]
    flat = [i.reshape(-1) for i in ids]
    upstream = jnp.asarray(b.upstream_np)
    uniques = [np.unique(i) for i in b.ids_np]
    bound = min(-(-max(len(u) for u in uniques) // 1024) * 1024, k)  # at most the ids
    compact = [jnp.asarray(np.concatenate([u, np.full(bound - len(u), vocab)]).astype(np.int32))
               for u in uniques]
    # The engine's view of each batch: dedup's rows (distinct live ids, dead = V + j) and slots.
    engine = [jax.jit(dedup, static_argnums=1)(f, vocab) for f in flat]
    values = jnp.asarray(np.random.default_rng(seed + 2).standard_normal((k, dim), np.float32))
    out: dict[str, Any] = {"k": k, "bound": bound, "unique_mean": b.unique_ids,
                           "unique_max": max(len(u) for u in uniques), "hlo": {}, "rows": []}

    steps: dict[str, Callable[[int], None]] = {}
    info: dict[str, dict[str, Any]] = {}

    def add(name: str, compiled, args_for, donated=None, note: str = "") -> None:
        steps[name] = _case(compiled, args_for, donated)
        info[name] = {"xla_bytes": _bytes(compiled), "note": note}

    # The benchmark's bound (tables.unique_rows_bound: the largest distinct count + 10%,
    # rounded up to 1,024); `bound` above is the tight one, for the pieces.
    out["unique_rows"] = unique_rows = tables_module.unique_rows_bound(b)
    for row_wise in (False, True):
        kind = "row-wise" if row_wise else "per-coordinate"
        for u in (None, unique_rows):
            tx = tables_module.optimizer("ours", row_wise, unique_rows=u)
            params = {"table": jnp.asarray(table_np)}
            box = [params, jax.jit(tx.init)(params)]
            compiled = _compiled(tables_module.table_step(tx), (*box, ids[0], upstream), (0, 1))
            text = compiled.as_text()
            name = f"{kind}, unique_rows={u}"
            out["hlo"][name] = {"ops": hlo_ops(text), "entry": entry_op_count(text),
                                "xla_bytes": _bytes(compiled)}
            add(f"full step, {name} (loss returned)", compiled,
                lambda i: (ids[i % len(ids)], upstream), box)
        tx = tables_module.optimizer("ours", row_wise, unique_rows=unique_rows)
        box1 = [{"table": jnp.asarray(table_np)}, None]
        box1[1] = jax.jit(tx.init)(box1[0])
        dropped = _compiled(tables_module.table_step(tx, return_loss=False),
                            (*box1, ids[0], upstream), (0, 1))
        out["hlo"][kind + ", loss dropped"] = {
            "ops": hlo_ops(dropped.as_text()), "entry": entry_op_count(dropped.as_text()),
            "xla_bytes": _bytes(dropped)}
        add(f"full step, {kind}, unique_rows={unique_rows}, loss dropped (no forward gather)",
            dropped,
            lambda i: (ids[i % len(ids)], upstream), box1)

        def engine_only(params, state, g_ids, g_values, tx=tx):
            updates, state = tx.update({"table": adagrad_jax.RowSparse(g_ids, g_values)},
                                       state, params)
            return adagrad_jax.apply_updates(params, updates), state

        box2 = [{"table": jnp.asarray(table_np)}, None]
        box2[1] = jax.jit(tx.init)(box2[0])
        add(f"optimizer alone (tx.update + apply on a given RowSparse), {kind},"
            f" unique_rows={unique_rows}",
            _compiled(engine_only, (*box2, flat[0], values), (0, 1)),
            lambda i: (flat[i % len(flat)], values), box2)

    grad_fn = adagrad_jax.value_and_row_grad(tables_module.pooled_loss)
    table = jnp.asarray(table_np)
    add(f"lookup alone: gather {k:,} rows + bag sums + loss",
        _compiled(lambda t, i, u: tables_module.pooled_loss({"table": t[i]}, u),
                  (table, ids[0], upstream)),
        lambda i: (table, ids[i % len(ids)], upstream))
    add("lookup + backward (value_and_row_grad alone: loss and row gradients)",
        _compiled(lambda t, i, u: jax.tree.leaves(grad_fn({"table": t}, {"table": i}, u)),
                  (table, ids[0], upstream)),
        lambda i: (table, ids[i % len(ids)], upstream))
    add("backward alone (row gradients only: XLA drops the forward gather)",
        _compiled(lambda t, i, u: grad_fn({"table": t}, {"table": i}, u)[1]["table"].values,
                  (table, ids[0], upstream)),
        lambda i: (table, ids[i % len(ids)], upstream))

    def sgd_step(params, i, u):
        loss, grads = grad_fn(params, {"table": i}, u)
        g = grads["table"]
        return adagrad_jax.apply_updates(
            params, {"table": adagrad_jax.RowSparse(g.indices, -LR * g.values)}), loss

    box3 = [{"table": jnp.asarray(table_np)}]
    add(f"lookup + backward + SGD row update (scatter-add of {k:,} rows; two table copies)",
        _compiled(sgd_step, (box3[0], ids[0], upstream), (0,)),
        lambda i: (ids[i % len(ids)], upstream), box3)
    box3b = [{"table": jnp.asarray(table_np)}]
    add("backward + SGD row update, loss dropped",
        _compiled(lambda p, i, u: sgd_step(p, i, u)[0], (box3b[0], ids[0], upstream), (0,)),
        lambda i: (ids[i % len(ids)], upstream), box3b)

    first = jnp.asarray(np.random.default_rng(seed + 3).random(k) < 0.25)
    add(f"prefix sum of {k:,} first-occurrence flags (unique_rows' compaction)",
        _compiled(lambda f: jnp.cumsum(f, dtype=jnp.int32), (first,)), lambda i: (first,))
    add(f"dedup alone (hash rounds, {k:,} ids)",
        _compiled(lambda f: dedup(f, vocab), (flat[0],)), lambda i: (flat[i % len(flat)],))
    add(f"sort of the {k:,} ids (jnp.sort)", _compiled(jnp.sort, (flat[0],)),
        lambda i: (flat[i % len(flat)],))
    add("jnp.unique(size=bound) of the ids",
        _compiled(lambda f: jnp.unique(f, size=bound, fill_value=vocab), (flat[0],)),
        lambda i: (flat[i % len(flat)],))
    add("dedup + duplicate sum (the engine's dedup_and_sum)",
        _compiled(lambda f, v: jax.ops.segment_sum(v, dedup(f, vocab)[1], num_segments=k),
                  (flat[0], values)), lambda i: (flat[i % len(flat)], values))
    add(f"duplicate sum alone: segment_sum into {k:,} segments",
        _compiled(lambda s, v: jax.ops.segment_sum(v, s, num_segments=k),
                  (engine[0][1], values)), lambda i: (engine[i % len(engine)][1], values))
    add("duplicate sum alone: segment_sum into the bound",
        _compiled(lambda s, v: jax.ops.segment_sum(v, s % bound, num_segments=bound),
                  (engine[0][1], values)), lambda i: (engine[i % len(engine)][1], values))

    def gather(t, r, fill=1.0):
        return t.at[r].get(mode="fill", fill_value=fill, unique_indices=True)

    add(f"gather {k:,} rows (the engine's rows, dead ones filled)",
        _compiled(gather, (table, engine[0][0])), lambda i: (table, engine[i % len(engine)][0]))
    add("gather the bound's rows (compacted unique ids)",
        _compiled(gather, (table, compact[0])), lambda i: (table, compact[i % len(compact)]))

    def scatter(t, r, v):
        return t.at[r].set(v, mode="drop", unique_indices=True)

    rows_k = jnp.ones((k, dim), jnp.float32)
    rows_b = jnp.ones((bound, dim), jnp.float32)
    box4, box5 = [jnp.asarray(table_np)], [jnp.asarray(table_np)]
    add(f"scatter {k:,} rows (set, dead dropped), donated",
        _compiled(scatter, (box4[0], engine[0][0], rows_k), (0,)),
        lambda i: (engine[i % len(engine)][0], rows_k), box4)
    add("scatter the bound's rows, donated",
        _compiled(scatter, (box5[0], compact[0], rows_b), (0,)),
        lambda i: (compact[i % len(compact)], rows_b), box5)
    box6 = [jnp.asarray(table_np)]
    add(f"apply: scatter-add {k:,} rows (dead dropped), donated",
        _compiled(lambda t, r, v: t.at[r].add(v, mode="drop"), (box6[0], engine[0][0], rows_k),
                  (0,)), lambda i: (engine[i % len(engine)][0], rows_k), box6)

    def rule(g, s):  # adagrad's per-coordinate arithmetic on gathered rows
        s = s + g * g
        return -LR * g * jax.lax.rsqrt(s + EPS), s

    acc_k = jnp.full((k, dim), TAU, jnp.float32)
    acc_b = jnp.full((bound, dim), TAU, jnp.float32)
    add(f"per-coordinate rule arithmetic on {k:,} rows", _compiled(rule, (values, acc_k)),
        lambda i: (values, acc_k))
    add("per-coordinate rule arithmetic on the bound's rows",
        _compiled(rule, (values[:bound], acc_b)), lambda i: (values[:bound], acc_b))

    times = _timing.round_robin_tiered(steps, {}, rounds=rounds, slow_every=1)
    for name in steps:
        out["rows"].append({"name": name, **_timing.stats_ms(times[name]), **info[name]})
    return out


def _marked(shapes: str, k: int) -> str:
    """Whether shapes carry the id count k or dedup's hash table (the power of two >= 4k)."""
    buckets = 1 << min((k - 1).bit_length() + 2, 30)
    sized = any(re.search(rf"[\[,]{n}[\],]", shapes) for n in (k, buckets))
    return "**ids**" if sized else ""


def markdown(result: dict[str, Any]) -> str:
    k = result["k"]
    lines = [f"{k:,} ids per step; distinct rows per batch: mean {result['unique_mean']:,.0f},"
             f" max {result['unique_max']:,}; the compacted bound of the pieces: {result['bound']:,};"
             f" the full steps' unique_rows: {result['unique_rows']:,}.",
             ""]
    for kind, h in result["hlo"].items():
        entry = ", ".join(f"{op} {n}" for op, n in sorted(h["entry"].items()))
        xla = "-" if h["xla_bytes"] is None else f"{h['xla_bytes'] / 2**20:.1f} MiB"
        lines += [f"#### Compiled step, {kind}: gathers, scatters, sorts, loops", "",
                  f"Top-level ops of the entry computation: {entry}. XLA's bytes accessed: {xla}.",
                  "", "| computation | op | result | operands | from | sized by the ids |",
                  "|---|---|---|---|---|---|"]
        for op in h["ops"]:
            lines.append(f"| {op['computation']} | {op['op']} | {op['result']} |"
                         f" {op['operands']} | {op['source'].removeprefix('jit(step)/')} |"
                         f" {_marked(op['result'] + ' ' + op['operands'], k)} |")
        lines.append("")
    lines += ["#### Timed variants (round-robin, same process)", "",
              "| variant | median ms | min-max | XLA bytes accessed (MiB) |", "|---|---|---|---|"]
    for r in result["rows"]:
        xla = "-" if r["xla_bytes"] is None else f"{r['xla_bytes'] / 2**20:.1f}"
        lines.append(f"| {r['name']} | {r['median_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f}"
                     f" | {xla} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=1_000_000)
    parser.add_argument("--bags", type=int, default=2048)
    parser.add_argument("--bag", type=int, default=20)
    parser.add_argument("--markdown", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    before = tables_module.machine()
    result = run(args.vocab, 64, args.bags, args.bag, args.rounds)
    text = f"Start: {before}\nEnd: {tables_module.machine()}\n\n" + markdown(result)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
