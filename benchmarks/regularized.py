"""The regularized Adagrad family against plain Adagrad, dense and on an embedding table.

Two problems, each timed round-robin (one step of every method per round,
order rotated) so that the methods of a problem share the machine's load:

- **dense**: one float32 leaf of `dense_n` elements (16M in the full run), a
  jit-compiled step that updates and applies, parameters and state donated:
  `adagrad_jax.proximal_adagrad`, `adagrad_jax.adagrad_da` and
  `adagrad_jax.ftrl` against `adagrad_jax.adagrad` (goal: at most 1.3x its
  time);
- **sparse**: a vocab x dim float32 table (1,000,000 x 64) with k Zipf ids per
  step (4,096), the problem of `benchmarks/sparse_embedding.py` (shared through
  `benchmarks/_cases.py`): the three with `RowSparse` gradients against
  `adagrad_jax.sparse_adagrad` (goal: at most 1.3x its time) and against
  `optax.adagrad` on the dense gradient, given (goal: 50x faster or more) and
  built by `jax.grad` of the lookup (what a model pays; shown, no goal). The
  dense-gradient steps take 30 to 100 times longer, so they are timed on every
  `dense_every`-th round only.

Every method uses lr = 0.01 and tau = 0.1 (the other benchmarks' optax
defaults); adagrad, sparse_adagrad and proximal_adagrad put eps = 1e-7 inside
the root (eps = 0 outside), adagrad_da and ftrl have no epsilon. The three
regularized methods run with l1 = 1e-3 and l2 = 1e-3 (nonzero, so that their
proximal maps run); adagrad_da and ftrl keep their default ``warm_start=True``.

Run ``python benchmarks/regularized.py [--quick]`` for a table, or call `run`;
``python -m benchmarks`` runs it as the "regularized" scenario.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

if __package__ in (None, ""):  # run as a script: python benchmarks/regularized.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from benchmarks import _cases, _timing
from devtools import hlo

LR, TAU, EPS = _cases.LR, _cases.TAU, _cases.EPS
L1, L2 = 1e-3, 1e-3
REGULARIZED = ("proximal_adagrad", "adagrad_da", "ftrl")
# The two-slot members again with their slots stacked (one array per parameter; for tables).
STACKED = "[stack_slots=True]"
STACKED_MEMBERS = ("adagrad_da" + STACKED, "ftrl" + STACKED)
GOAL_VS_BASELINE = 1.3  # at most this many times the plain (sparse_)adagrad step
GOAL_VS_DENSE = 50.0  # at least this many times faster than optax on the dense gradient

FULL = {"dense_n": 16 * 2**20, "vocab": 1_000_000, "dim": 64, "k": 4096,
        "dense_rounds": 30, "sparse_rounds": 200}
QUICK = {"dense_n": 4 * 2**20, "vocab": 100_000, "dim": 32, "k": 1024,
         "dense_rounds": 10, "sparse_rounds": 30}
TINY = {"dense_n": 4096, "vocab": 1000, "dim": 8, "k": 16,
        "dense_rounds": 2, "sparse_rounds": 3}


def optimizer(method: str, unique_rows: int | None = None) -> optax.GradientTransformation:
    """The optimizer a method name stands for (same lr and tau throughout); `unique_rows`
    for the table members (benchmarks/tables.py). A name ending in `STACKED` stacks its
    two slots."""
    stack_slots = method.endswith(STACKED)
    method = method.removesuffix(STACKED)
    if method == "adagrad":
        return adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS)
    if method == "sparse_adagrad":
        return adagrad_jax.sparse_adagrad(LR, TAU, eps=0.0, eps_root=EPS)
    if method == "proximal_adagrad":
        return adagrad_jax.proximal_adagrad(
            LR, TAU, eps=0.0, eps_root=EPS, l1=L1, l2=L2, unique_rows=unique_rows
        )
    if method == "adagrad_da":
        return adagrad_jax.adagrad_da(
            LR, TAU, l1=L1, l2=L2, unique_rows=unique_rows, stack_slots=stack_slots
        )
    if method == "ftrl":
        return adagrad_jax.ftrl(
            LR,
            initial_accumulator_value=TAU,
            l1=L1,
            l2=L2,
            unique_rows=unique_rows,
            stack_slots=stack_slots,
        )
    if method == "optax_dense":
        return optax.adagrad(LR, initial_accumulator_value=TAU, eps=EPS)
    raise ValueError(f"unknown method {method!r}")


def _dense_case(method: str, params_np: Any, grad: jax.Array) -> tuple[Callable, dict]:
    """A donated, precompiled update-and-apply step on one dense leaf."""
    tx = optimizer(method)
    params = jnp.asarray(params_np)
    state = tx.init(params)
    fn = jax.jit(_cases.chain_step(tx), donate_argnums=(0, 1))
    compiled, seconds = _timing.timed(lambda: fn.lower(params, state, grad).compile())
    info = hlo.summary(compiled, params.size, params.size)
    info["compile_s"] = seconds
    box = [params, state]

    def step() -> None:
        box[0], box[1] = compiled(box[0], box[1], grad)
        jax.block_until_ready(box[0])

    return step, info


def _label(method: str, *, sparse: bool) -> str:
    if method == "optax_dense":
        return "optax.adagrad (dense grad given)"
    if method == "optax_dense_with_grad":
        return "optax.adagrad (+ jax.grad dense grad)"
    suffix = "" if method in ("adagrad", "sparse_adagrad") else "(l1, l2)"
    suffix += ", RowSparse" if sparse and method != "sparse_adagrad" else ""
    return f"adagrad_jax.{method}{suffix}"


def dense(dense_n: int, rounds: int) -> list[dict[str, Any]]:
    """Rows of the dense problem: each method against adagrad, one float32 leaf."""
    params_np, grads_np = _cases.make_data([(dense_n,)])
    grad = jnp.asarray(grads_np[0])
    methods = ("adagrad",) + REGULARIZED + STACKED_MEMBERS
    cases = {m: _dense_case(m, params_np[0], grad) for m in methods}
    times = _timing.round_robin({m: c[0] for m, c in cases.items()}, rounds=rounds)
    rows = []
    for m, (_, info) in cases.items():
        row: dict[str, Any] = {
            "case": f"dense {_size(dense_n)}",
            "method": m,
            "label": _label(m, sparse=False),
            "donate": True,
            "n_elements": dense_n,
            **_timing.stats_ms(times[m]),
        }
        row.update(info)
        row["times_ms"] = [1e3 * s for s in times[m]]
        rows.append(row)
    base = rows[0]["median_ms"]
    for row in rows:
        row["vs_baseline"] = row["median_ms"] / base
        if row["method"].removesuffix(STACKED) in REGULARIZED:
            row["goal"] = f"<= {GOAL_VS_BASELINE}x adagrad"
            row["goal_ratio_met"] = row["vs_baseline"] <= GOAL_VS_BASELINE
            row["goal_met"] = row["goal_ratio_met"]
    return rows


def sparse(vocab: int, dim: int, k: int, rounds: int, *, dense_every: int = 10,
           seed: int = 0) -> list[dict[str, Any]]:
    """Rows of the table problem: RowSparse steps and the dense-gradient optax steps."""
    problem = _cases.table_problem(vocab, dim, k, seed)
    batches = problem.sparse_batches
    fast: dict[str, tuple[Callable[[int], None], dict[str, Any]]] = {}
    for m in ("sparse_adagrad",) + REGULARIZED + STACKED_MEMBERS:
        tx = optimizer(m)
        fast[m] = _cases.table_case(
            _cases.row_sparse_step(tx), jnp.asarray(problem.table_np), tx, batches)
    dense_tx = optimizer("optax_dense")
    slow = {
        "optax_dense": _cases.table_case(
            _cases.dense_grad_step(dense_tx), jnp.asarray(problem.table_np), dense_tx,
            [(problem.dense_grad(),)]),
        "optax_dense_with_grad": _cases.table_case(
            _cases.dense_grad_from_lookup_step(dense_tx), jnp.asarray(problem.table_np),
            dense_tx, batches),
    }
    times = _timing.round_robin_tiered(
        {m: c[0] for m, c in fast.items()}, {m: c[0] for m, c in slow.items()},
        rounds=rounds, slow_every=dense_every,
    )
    rows = []
    for m, (_, info) in {**fast, **slow}.items():
        row: dict[str, Any] = {
            "case": f"sparse {vocab:,} x {dim}, {k:,} ids",
            "method": m,
            "label": _label(m, sparse=True),
            "donate": True,
            "n_elements": vocab * dim,
            **_timing.stats_ms(times[m]),
        }
        row.update(info)
        row["unique_ids"] = problem.unique_ids
        row["times_ms"] = [1e3 * s for s in times[m]]
        rows.append(row)
    medians = {r["method"]: r["median_ms"] for r in rows}
    for row in rows:
        if row["method"] in slow:
            continue
        row["vs_baseline"] = row["median_ms"] / medians["sparse_adagrad"]
        row["x_faster_than_optax_dense"] = medians["optax_dense"] / row["median_ms"]
        row["x_faster_than_optax_dense_with_grad"] = (
            medians["optax_dense_with_grad"] / row["median_ms"])
        if row["method"].removesuffix(STACKED) in REGULARIZED:
            row["goal"] = (f"<= {GOAL_VS_BASELINE}x sparse_adagrad, >= {GOAL_VS_DENSE:.0f}x"
                           " faster than optax dense")
            row["goal_ratio_met"] = row["vs_baseline"] <= GOAL_VS_BASELINE
            row["goal_vs_dense_met"] = row["x_faster_than_optax_dense"] >= GOAL_VS_DENSE
            row["goal_met"] = row["goal_ratio_met"] and row["goal_vs_dense_met"]
    return rows


def run(
    dense_n: int = FULL["dense_n"],
    vocab: int = FULL["vocab"],
    dim: int = FULL["dim"],
    k: int = FULL["k"],
    *,
    dense_rounds: int = FULL["dense_rounds"],
    sparse_rounds: int = FULL["sparse_rounds"],
    dense_every: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Times both problems; one dict per (problem, method).

    Args:
      dense_n: elements of the dense leaf. Default 16M.
      vocab, dim, k: the table's shape and the ids per step. Default
        1,000,000 x 64 with 4,096 ids.
      dense_rounds: round-robin rounds of the dense problem. Default 30.
      sparse_rounds: rounds of the table problem; the dense-gradient optax steps
        run on every dense_every-th of them (at least 3). Default 200.
      seed: seed of the ids and gradients.

    Returns:
      Dicts with case, method, label, median_ms, min_ms, max_ms, rounds,
      times_ms, vs_baseline (median over adagrad's, or over sparse_adagrad's),
      for the three regularized methods goal, goal_ratio_met (vs_baseline <=
      1.3), on the table goal_vs_dense_met (>= 50x faster than optax on the
      dense gradient) and goal_met (all of them); for table rows
      x_faster_than_optax_dense (and ..._with_grad); dense rows add loops and
      xla_bytes_per_element of the compiled step, table rows temp_mb and
      aliased_mb.
    """
    print(f"  regularized: dense {_size(dense_n)} ...", flush=True)
    rows = dense(dense_n, dense_rounds)
    print(f"  regularized: sparse {vocab:,} x {dim}, {k:,} ids ...", flush=True)
    rows += sparse(vocab, dim, k, sparse_rounds, dense_every=dense_every, seed=seed)
    return rows


def _size(n: int) -> str:
    if n % 2**20 == 0:
        return f"{n // 2**20}M"
    return f"{n:,}"


def _times(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    header = ["case", "method", "median ms", "min-max", "vs (sparse_)adagrad",
              "x faster than optax dense (given / + jax.grad)", "goal met", "loops",
              "XLA bytes/elt"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        faster = "-"
        if r.get("x_faster_than_optax_dense") is not None:
            faster = (f"{_times(r['x_faster_than_optax_dense'])} /"
                      f" {_times(r['x_faster_than_optax_dense_with_grad'])}")
        met = "-"
        if "goal_ratio_met" in r:
            met = f"<= {GOAL_VS_BASELINE}x: {_yes(r['goal_ratio_met'])}"
        if "goal_vs_dense_met" in r:
            met += f"; >= {GOAL_VS_DENSE:.0f}x: {_yes(r['goal_vs_dense_met'])}"
        cells = [
            r["case"], r["label"], f"{r['median_ms']:.3f}",
            f"{r['min_ms']:.3f}-{r['max_ms']:.3f}",
            "-" if r.get("vs_baseline") is None else f"{r['vs_baseline']:.2f}x",
            faster, met,
            "-" if r.get("loops") is None else str(r["loops"]),
            "-" if r.get("xla_bytes_per_element") is None
            else f"{r['xla_bytes_per_element']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    configs = {"full": FULL, "quick": QUICK, "tiny": TINY}
    return _timing.run_alone(
        __doc__.split("\n")[0], run, table, configs, "4M dense, 100,000 x 32 table", argv
    )


if __name__ == "__main__":
    main()
