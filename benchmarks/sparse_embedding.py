"""Sparse embedding scenario: one Adagrad step on a large table, few rows touched.

A vocab x dim float32 table (default 1,000,000 x 64) and k ids per step
(default 4,096) drawn from a Zipf law, so that many ids repeat, with a random
row gradient per id. Compared side by side, round-robin under the same load:

- ``adagrad_jax.sparse_adagrad``: row gradients in, row updates scattered in
  place (jit-compiled step, table and state donated), per-coordinate and
  ``row_wise=True`` accumulators;
- ``optax.adagrad`` on the dense gradient, given (the optimizer alone) and
  built inside the step by ``jax.grad`` of the lookup (what a model pays);
- ``torch.optim.Adagrad`` with a sparse COO gradient, as ``nn.Embedding(sparse=True)``
  produces, when PyTorch is installed.

Every method uses optax's Adagrad defaults: lr = 0.01, tau = 0.1, eps = 1e-7
(inside the root for JAX, outside for PyTorch, which costs the same). The dense
methods take 50 to 200 times longer per step, so they are timed on every
``dense_every``-th round only.

Run ``python benchmarks/sparse_embedding.py`` for a table, or call `run`.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ""):  # run as a script: python benchmarks/sparse_embedding.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from benchmarks import _cases, _timing

LR, TAU, EPS = _cases.LR, _cases.TAU, _cases.EPS


def _torch_case(table_np: np.ndarray, ids_np: list, values_np: np.ndarray):
    import torch  # optional: the `bench` extra

    vocab, dim = table_np.shape
    weight = torch.nn.Parameter(torch.from_numpy(table_np.copy()))
    opt = torch.optim.Adagrad([weight], lr=LR, initial_accumulator_value=TAU, eps=EPS)
    values = torch.from_numpy(values_np)
    ids = [torch.from_numpy(i.astype(np.int64)).unsqueeze(0) for i in ids_np]

    def step(i: int) -> None:
        # What nn.Embedding(sparse=True) hands the optimizer: an uncoalesced COO
        # gradient; Adagrad coalesces (sorts and sums duplicates) itself.
        weight.grad = torch.sparse_coo_tensor(
            ids[i % len(ids)], values, (vocab, dim), check_invariants=False
        )
        opt.step()

    return step, {"threads": torch.get_num_threads()}


def run(
    num_steps: int = 200,
    vocab: int = 1_000_000,
    dim: int = 64,
    k: int = 4096,
    *,
    dense_every: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Times each method; one dict per method.

    Args:
      num_steps: rounds; each times one step of every sparse method. Default 200.
      vocab, dim: the table's shape. Default 1,000,000 x 64.
      k: ids per step (with repeats). Default 4096.
      dense_every: the dense methods are timed on every dense_every-th round
        (at least 3 rounds in all). Default 10.
      seed: seed of the ids and gradients. Default 0.

    Returns:
      Dicts with name, median_ms, min_ms, max_ms, rounds, and where they apply
      compile_s, temp_mb / aliased_mb (XLA's memory analysis of the compiled
      step), unique_ids (mean distinct ids per step) and, for the sparse rows,
      x_vs_torch / x_vs_optax_dense / x_vs_optax_dense_with_grad (how many
      times faster, by median).
    """
    problem = _cases.table_problem(vocab, dim, k, seed)
    batches = problem.sparse_batches

    fast: dict[str, tuple[Callable[[int], None], dict[str, Any]]] = {}
    slow: dict[str, tuple[Callable[[int], None], dict[str, Any]]] = {}
    tx = adagrad_jax.sparse_adagrad(LR, TAU, eps=0.0, eps_root=EPS)
    fast["adagrad_jax.sparse_adagrad"] = _cases.table_case(
        _cases.row_sparse_step(tx), jnp.asarray(problem.table_np), tx, batches)
    tx = adagrad_jax.sparse_adagrad(LR, TAU, eps=0.0, eps_root=EPS, row_wise=True)
    fast["adagrad_jax.sparse_adagrad(row_wise=True)"] = _cases.table_case(
        _cases.row_sparse_step(tx), jnp.asarray(problem.table_np), tx, batches)
    if importlib.util.find_spec("torch") is not None:
        fast["torch.optim.Adagrad (sparse grad)"] = _torch_case(
            problem.table_np, problem.ids_np, problem.values_np)

    dense_tx = optax.adagrad(LR)
    slow["optax.adagrad (dense grad given)"] = _cases.table_case(
        _cases.dense_grad_step(dense_tx), jnp.asarray(problem.table_np), dense_tx,
        [(problem.dense_grad(),)])
    slow["optax.adagrad (+ jax.grad dense grad)"] = _cases.table_case(
        _cases.dense_grad_from_lookup_step(dense_tx), jnp.asarray(problem.table_np),
        dense_tx, batches)

    cases = {**fast, **slow}
    with warnings.catch_warnings():
        # PyTorch's Adagrad builds sparse tensors without saying whether to
        # check them and warns once about it; nothing here to act on.
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        times = _timing.round_robin_tiered(
            {name: step for name, (step, _) in fast.items()},
            {name: step for name, (step, _) in slow.items()},
            rounds=num_steps, slow_every=dense_every,
        )
    unique = problem.unique_ids

    rows = []
    for name, (_, info) in cases.items():
        row: dict[str, Any] = {"name": name, **_timing.stats_ms(times[name])}
        row.update(info)
        row["unique_ids"] = unique
        rows.append(row)
    medians = {r["name"]: r["median_ms"] for r in rows}
    for row in rows:
        if row["name"].startswith("adagrad_jax"):
            for key, other in (
                ("x_vs_torch", "torch.optim.Adagrad (sparse grad)"),
                ("x_vs_optax_dense", "optax.adagrad (dense grad given)"),
                ("x_vs_optax_dense_with_grad", "optax.adagrad (+ jax.grad dense grad)"),
            ):
                if other in medians:
                    row[key] = medians[other] / row["median_ms"]
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["median_ms", "min_ms", "max_ms", "rounds", "x_vs_torch", "x_vs_optax_dense",
               "x_vs_optax_dense_with_grad", "temp_mb", "aliased_mb", "compile_s"]
    width = max(len(r["name"]) for r in rows)
    print(f"{'method':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"{'-':>10}" if v is None else f"{v:>10.3f}" if isinstance(v, float)
                         else f"{v:>10}")
        print(f"{r['name']:<{width}}  " + "  ".join(cells))


def main() -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=4096)
    args = parser.parse_args()
    rows = run(args.steps, args.vocab, args.dim, args.k)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"table {args.vocab:,} x {args.dim} float32, {args.k:,} ids per step"
          f" ({rows[0]['unique_ids']:.0f} distinct on average);"
          f" {jax.devices()[0].platform}, {os.cpu_count()} cpus{load}")
    _print_table(rows)


if __name__ == "__main__":
    main()
