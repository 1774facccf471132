"""The table optimizers of issue 18 on one table step, against adagrad's and FBGEMM's.

The step is benchmarks/tables.py's (pooled lookup of Zipf ids in a vocab x 64
table, loss = sum(pooled * upstream), row gradients, the optimizer, the
update applied; table and state donated; ``unique_rows`` set to the case's
bound), with the loss returned. Three groups, each timed round-robin in one
process (one step of each method per round, order rotated), each against its
own baseline:

- per-coordinate: ``adagrad`` (the baseline), ``adagrad_momentum`` (slots
  apart and stacked), ``ftrl(multiply_linear_by_learning_rate=True,
  stack_slots=True)``, ``compat.fbgemm_exact_adagrad`` (weight decay none and
  decoupled) and FBGEMM's own ``EXACT_ADAGRAD`` CPU TBE;
- row-wise: ``adagrad(row_wise=True)`` (the baseline),
  ``compat.fbgemm_rowwise_adagrad`` (none, l2, decoupled with max_norm) and
  FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (none; and with decoupled weight decay,
  which its CPU fast path ignores: it costs FBGEMM nothing);
- low precision: ``adagrad`` on a float32 table (the baseline) and on a
  bfloat16 table, rounded to nearest and with ``stochastic_rounding=True``
  (float32 accumulator, and a bfloat16 one), per-coordinate and row-wise.

Each row gives the median and its ratio to the group's baseline
(``vs_baseline``), FBGEMM's rows their ratio to the preset of the same mode
(``preset_vs_fbgemm``: ours / FBGEMM), and the bytes of the table and the
optimizer state per table row. Goals (issue 18): each new optimizer at most
1.3x adagrad's step, the FBGEMM presets at most FBGEMM's time, bfloat16 with
stochastic rounding at most 1.1x the float32 step with half the table memory.

Run ``python benchmarks/table_optimizers.py [--quick | --tiny] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/table_optimizers.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from adagrad_jax import compat
from benchmarks import _timing
from benchmarks import tables as tables_module
from devtools.models import EPS, LR, TAU

FULL = {"vocab": 1_000_000, "dim": 64, "cases": tables_module.CASES, "rounds": 20}
QUICK = {"vocab": 1_000_000, "dim": 64, "cases": tables_module.CASES[1:2], "rounds": 10}
TINY = {"vocab": 1000, "dim": 8, "cases": (("8 bags of 4", 8, 4),), "rounds": 2}


def _ours(make: Callable[[int | None], Any], dtype: Any = None) -> Callable:
    return lambda table_np: tables_module._jax_method(make, table_np, dtype=dtype)


def _fbgemm(row_wise: bool, **options: Any) -> Callable:
    return lambda table_np: tables_module._fbgemm_method(table_np, row_wise, **options)


def groups(fbgemm: bool) -> dict[str, dict[str, tuple[Callable, Any]]]:
    """group -> method -> (builder of a table, the mode it shares with FBGEMM or None).

    The first method of each group is its baseline.
    """
    per_coordinate: dict[str, tuple[Callable, Any]] = {
        "adagrad": (_ours(lambda u: adagrad_jax.adagrad(
            LR, TAU, eps=0.0, eps_root=EPS, unique_rows=u)), None),
        "adagrad_momentum": (_ours(lambda u: adagrad_jax.adagrad_momentum(
            LR, 0.9, unique_rows=u)), None),
        "adagrad_momentum[stack_slots=True]": (_ours(lambda u: adagrad_jax.adagrad_momentum(
            LR, 0.9, stack_slots=True, unique_rows=u)), None),
        "ftrl[multiply_linear_by_learning_rate, stack_slots]": (_ours(
            lambda u: adagrad_jax.ftrl(LR, l1=1e-3, l2=1e-3, stack_slots=True, unique_rows=u,
                                       multiply_linear_by_learning_rate=True)), None),
        "compat.fbgemm_exact_adagrad": (_ours(lambda u: compat.fbgemm_exact_adagrad(
            LR, EPS, unique_rows=u)), "none"),
        "compat.fbgemm_exact_adagrad[decoupled]": (_ours(lambda u: compat.fbgemm_exact_adagrad(
            LR, EPS, weight_decay=1e-4, weight_decay_mode="decoupled", unique_rows=u)), None),
    }
    row_wise: dict[str, tuple[Callable, Any]] = {
        "adagrad[row_wise]": (_ours(lambda u: adagrad_jax.adagrad(
            LR, TAU, eps=0.0, eps_root=EPS, row_wise=True, unique_rows=u)), None),
        "compat.fbgemm_rowwise_adagrad": (_ours(lambda u: compat.fbgemm_rowwise_adagrad(
            LR, EPS, unique_rows=u)), "none"),
        "compat.fbgemm_rowwise_adagrad[l2]": (_ours(lambda u: compat.fbgemm_rowwise_adagrad(
            LR, EPS, weight_decay=1e-4, weight_decay_mode="l2", unique_rows=u)), None),
        "compat.fbgemm_rowwise_adagrad[decoupled, max_norm]": (_ours(
            lambda u: compat.fbgemm_rowwise_adagrad(
                LR, EPS, weight_decay=1e-4, weight_decay_mode="decoupled", max_norm=1.0,
                unique_rows=u)), "decoupled"),
    }
    low: dict[str, tuple[Callable, Any]] = {
        "adagrad, float32 table": (_ours(lambda u: adagrad_jax.adagrad(
            LR, TAU, unique_rows=u)), None),
        "adagrad, bfloat16 table": (_ours(lambda u: adagrad_jax.adagrad(
            LR, TAU, unique_rows=u), jnp.bfloat16), None),
        "adagrad, bfloat16 table, stochastic_rounding": (_ours(lambda u: adagrad_jax.adagrad(
            LR, TAU, unique_rows=u, stochastic_rounding=True), jnp.bfloat16), None),
        "adagrad, bfloat16 table and accumulator, stochastic_rounding": (_ours(
            lambda u: adagrad_jax.adagrad(LR, TAU, unique_rows=u, stochastic_rounding=True,
                                          accumulator_dtype=jnp.bfloat16), jnp.bfloat16), None),
        "adagrad[row_wise], bfloat16 table, stochastic_rounding": (_ours(
            lambda u: adagrad_jax.adagrad(LR, TAU, unique_rows=u, row_wise=True,
                                          stochastic_rounding=True), jnp.bfloat16), None),
    }
    if fbgemm:
        from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

        decoupled = {"weight_decay": 1e-4, "weight_decay_mode": WeightDecayMode.DECOUPLE}
        per_coordinate["FBGEMM EXACT_ADAGRAD"] = (_fbgemm(False), "none")
        row_wise["FBGEMM EXACT_ROWWISE_ADAGRAD"] = (_fbgemm(True), "none")
        row_wise["FBGEMM EXACT_ROWWISE_ADAGRAD[decoupled]"] = (_fbgemm(True, **decoupled),
                                                               "decoupled")
    return {"per-coordinate": per_coordinate, "row-wise": row_wise, "low precision": low}


def _state_bytes_per_row(method: str, dim: int) -> int:
    """Bytes of the table row and the optimizer state per row, from the method's name."""
    table = 2 if "bfloat16 table" in method else 4
    acc = 2 if "bfloat16 table and accumulator" in method else 4
    if "row_wise" in method or "rowwise" in method.lower():
        state = acc
    elif "momentum" in method or "ftrl" in method:
        state = 2 * 4 * dim
    else:
        state = acc * dim
    return table * dim + state


def run(vocab: int, dim: int, cases, rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    fbgemm = tables_module.fbgemm_available() and jax.default_backend() == "cpu"
    table_np = 0.01 * np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)
    batches = [tables_module.make_batches(name, batch, bag, vocab, dim, seed + 1)
               for name, batch, bag in cases]
    rows = []
    for group, methods in groups(fbgemm).items():
        print(f"  table optimizers: {group} ...", flush=True)
        builders = {m: make(table_np) for m, (make, _) in methods.items()}
        baseline = next(iter(methods))
        for b in batches:
            steps = {m: build(b)[0] for m, build in builders.items()}
            for m in steps:
                if m.startswith("FBGEMM"):
                    for i in range(tables_module.TORCH_WARMUP):
                        steps[m](i)
            times = _timing.round_robin_tiered(steps, {}, rounds=rounds, slow_every=1)
            medians = {m: _timing.stats_ms(times[m])["median_ms"] for m in steps}
            for m in steps:
                mode = methods[m][1]
                peer = next((f for f in steps if f.startswith("FBGEMM") and methods[f][1] == mode
                             and mode is not None and f != m), None)
                rows.append({
                    "group": group, "case": b.name, "method": m,
                    **_timing.stats_ms(times[m]),
                    "vs_baseline": medians[m] / medians[baseline],
                    "vs_fbgemm": (medians[m] / medians[peer]
                                  if peer is not None and not m.startswith("FBGEMM") else None),
                    "bytes_per_row": None if m.startswith("FBGEMM") else _state_bytes_per_row(
                        m, dim),
                })
            del steps
        del builders
        gc.collect()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| group | case | method | median ms (min-max) | vs group baseline | vs FBGEMM"
             " (same mode) | table + state bytes per row |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = "-" if r["vs_fbgemm"] is None else f"{r['vs_fbgemm']:.2f}x"
        nbytes = "-" if r["bytes_per_row"] is None else f"{r['bytes_per_row']:,}"
        lines.append(f"| {r['group']} | {r['case']} | {r['method']} | {r['median_ms']:.3f}"
                     f" ({r['min_ms']:.2f}-{r['max_ms']:.2f}) | {r['vs_baseline']:.2f}x | {vs} |"
                     f" {nbytes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="bags of 20 only, 10 rounds")
    mode.add_argument("--tiny", action="store_true", help="toy sizes, for the smoke test")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--markdown", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    if args.rounds:
        config["rounds"] = args.rounds
    before = tables_module.machine()
    print(before, flush=True)
    rows = run(**config)
    text = "\n".join([f"Start: {before}", f"End: {tables_module.machine()}", "", table(rows)])
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
