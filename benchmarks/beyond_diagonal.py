"""Beyond the diagonal: full_matrix_adagrad and shampoo against adagrad and optax.adam.

For each float32 layer (1024 x 1024 and 4096 x 1024 in the full run) a
jit-compiled step that updates and applies, parameters and state donated,
timed round-robin (one step of every method per round, order rotated) so that
the methods share the machine's load:

- **ordinary steps**: `adagrad_jax.adagrad` (lr 0.01, tau 0.1, eps 1e-7 inside
  the root, as the other benchmarks), `optax.adam(1e-3)`, `adagrad_jax.shampoo`
  at each block size, and on the first layer `adagrad_jax.full_matrix_adagrad`
  at each block size, all with their preconditioners already computed and
  not due (``preconditioner_every`` beyond the run): statistics, cached roots,
  grafting. Goal: shampoo's ordinary step at most 3x adagrad's on the
  1024 x 1024 layer on CPU (the default block size is the goal's row);
- **preconditioner steps**: the same Shampoo and full-matrix configurations
  with ``preconditioner_every=1``, so that every step runs the
  eigendecompositions (fewer rounds: they are slow).

Each row also gives the optimizer state's size (from `jax.eval_shape` of
`init`: MiB and bytes per parameter; adagrad keeps 4, adam 8) and the compiled
step's peak memory. Ratios are of medians against adagrad and optax.adam in the
same rounds.

Run ``python benchmarks/beyond_diagonal.py [--quick | --tiny]`` for a table, or
call `run`; ``python -m benchmarks`` runs it as the "beyond" scenario.
"""

from __future__ import annotations

import math
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

if __package__ in (None, ""):  # run as a script: python benchmarks/beyond_diagonal.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from benchmarks import _cases, _timing
from devtools import hlo

LR, TAU, EPS = _cases.LR, _cases.TAU, _cases.EPS
ADAM_LR = 1e-3
NEVER = 2**30  # preconditioner_every for ordinary steps: due at the first step only
GOAL_VS_ADAGRAD = 3.0  # shampoo's ordinary step, 1024 x 1024, CPU
SHAMPOO_DEFAULT_BLOCK = 128

FULL = {"layers": ((1024, 1024), (4096, 1024)), "shampoo_blocks": (32, 128, 1024),
        "full_matrix_blocks": (1, 8, 32, 128), "rounds": 10, "refresh_rounds": 2}
QUICK = {"layers": ((1024, 1024),), "shampoo_blocks": (32, 128),
         "full_matrix_blocks": (1, 8, 32), "rounds": 6, "refresh_rounds": 1}
TINY = {"layers": ((64, 32),), "shampoo_blocks": (16,), "full_matrix_blocks": (1, 8),
        "rounds": 2, "refresh_rounds": 1}


def optimizer(method: str, block_size: int | None = None, *,
              refresh: bool = False) -> optax.GradientTransformation:
    """The optimizer a method name stands for; `refresh` makes every step a refresh."""
    every = 1 if refresh else NEVER
    if method == "adagrad":
        return adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS)
    if method == "adam":
        return optax.adam(ADAM_LR)
    if method == "shampoo":
        return adagrad_jax.shampoo(LR, block_size=block_size, preconditioner_every=every,
                                   start_preconditioning_step=1)
    if method == "full_matrix_adagrad":
        return adagrad_jax.full_matrix_adagrad(LR, block_size=block_size,
                                               preconditioner_every=every)
    raise ValueError(f"unknown method {method!r}")


def _case(tx: optax.GradientTransformation, params_np: Any,
          grad: jax.Array) -> tuple[Callable[[], None], dict[str, Any]]:
    """A donated, precompiled step, run once (the first step, a refresh for every method)."""
    params = jnp.asarray(params_np)
    state = tx.init(params)
    abstract = jax.eval_shape(tx.init, jax.ShapeDtypeStruct(params.shape, params.dtype))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    fn = jax.jit(_cases.chain_step(tx), donate_argnums=(0, 1))
    # optax.adam mixes its int32 count with floats: traced under the default promotion
    # rules (the tests run under strict ones).
    with jax.numpy_dtype_promotion("standard"):
        compiled, seconds = _timing.timed(lambda: fn.lower(params, state, grad).compile())
    info: dict[str, Any] = {"compile_s": seconds,
                            "state_mib": state_bytes / 2**20,
                            "state_bytes_per_param": state_bytes / params.size}
    info["peak_mib"] = (hlo.summary(compiled, params.size, params.size).get("peak_bytes")
                        or 0) / 2**20
    box = [params, state]

    def step() -> None:
        box[0], box[1] = compiled(box[0], box[1], grad)
        jax.block_until_ready(box[0])

    step()
    return step, info


def _label(method: str, block_size: int | None) -> str:
    if method == "adam":
        return f"optax.adam({ADAM_LR})"
    if block_size is None:
        return f"adagrad_jax.{method}"
    return f"adagrad_jax.{method}(block_size={block_size})"


def _rows(case: str, step: str, cases: dict, times: dict, n: int) -> list[dict[str, Any]]:
    rows = []
    for (method, block), (_, info) in cases.items():
        key = (method, block)
        row: dict[str, Any] = {
            "case": case, "step": step, "method": method, "block_size": block,
            "label": _label(method, block), "donate": True, "n_elements": n,
            **_timing.stats_ms(times[key]), **info,
            "times_ms": [1e3 * s for s in times[key]],
        }
        rows.append(row)
    return rows


def layer(shape: tuple[int, int], shampoo_blocks: tuple[int, ...],
          full_matrix_blocks: tuple[int, ...], rounds: int,
          refresh_rounds: int) -> list[dict[str, Any]]:
    """Rows of one layer: ordinary steps of every method, then refresh steps."""
    n = math.prod(shape)
    params_np, grads_np = _cases.make_data([shape])
    grad = jnp.asarray(grads_np[0])
    case = f"{shape[0]} x {shape[1]}"
    methods = [("adagrad", None), ("adam", None)]
    methods += [("shampoo", b) for b in shampoo_blocks]
    methods += [("full_matrix_adagrad", b) for b in full_matrix_blocks]
    ordinary = {m: _case(optimizer(*m), params_np[0], grad) for m in methods}
    times = _timing.round_robin({m: c[0] for m, c in ordinary.items()}, rounds=rounds,
                                warmup=1)
    rows = _rows(case, "ordinary", ordinary, times, n)
    refresh = {m: _case(optimizer(*m, refresh=True), params_np[0], grad)
               for m in methods if m[1] is not None}
    times = _timing.round_robin({m: c[0] for m, c in refresh.items()},
                                rounds=refresh_rounds, warmup=0)
    rows += _rows(case, "preconditioner", refresh, times, n)
    medians = {r["method"]: r["median_ms"] for r in rows if r["block_size"] is None}
    for r in rows:
        r["vs_adagrad"] = r["median_ms"] / medians["adagrad"]
        r["vs_adam"] = r["median_ms"] / medians["adam"]
        if (r["method"] == "shampoo" and r["step"] == "ordinary"
                and r["block_size"] == _goal_block(shampoo_blocks)):
            r["goal"] = f"<= {GOAL_VS_ADAGRAD:.0f}x adagrad"
            r["goal_met"] = r["vs_adagrad"] <= GOAL_VS_ADAGRAD
    return rows


def _goal_block(blocks: tuple[int, ...]) -> int:
    return SHAMPOO_DEFAULT_BLOCK if SHAMPOO_DEFAULT_BLOCK in blocks else blocks[0]


def run(layers: tuple[tuple[int, int], ...] = FULL["layers"],
        shampoo_blocks: tuple[int, ...] = FULL["shampoo_blocks"],
        full_matrix_blocks: tuple[int, ...] = FULL["full_matrix_blocks"],
        *, rounds: int = FULL["rounds"],
        refresh_rounds: int = FULL["refresh_rounds"]) -> list[dict[str, Any]]:
    """Times every layer; one dict per (layer, step kind, method, block size).

    Args:
      layers: float32 matrix shapes. Default 1024 x 1024 and 4096 x 1024.
      shampoo_blocks: Shampoo block sizes timed on every layer.
      full_matrix_blocks: full-matrix block sizes, timed on the first layer only
        (a refresh costs n * b^2: on 4096 x 1024 with b = 128 over half a minute).
      rounds: round-robin rounds of ordinary steps. Default 10.
      refresh_rounds: rounds of preconditioner steps. Default 2.

    Returns:
      Dicts with case, step ('ordinary' or 'preconditioner'), method,
      block_size, label, median_ms, min_ms, max_ms, rounds, times_ms,
      compile_s, state_mib, state_bytes_per_param, peak_mib, vs_adagrad,
      vs_adam, and on the goal's row (shampoo, default block size, ordinary)
      goal and goal_met.
    """
    rows = []
    for i, shape in enumerate(layers):
        print(f"  beyond: {shape[0]} x {shape[1]} ...", flush=True)
        rows += layer(shape, shampoo_blocks, full_matrix_blocks if i == 0 else (),
                      rounds, refresh_rounds)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    header = ["layer", "step", "method", "median ms", "min-max", "vs adagrad", "vs adam",
              "state MiB (bytes/param)", "peak MiB", "goal met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        goal = "-" if "goal_met" not in r else (
            f"{r['goal']}: {'yes' if r['goal_met'] else '**no**'}")
        cells = [
            r["case"], r["step"], r["label"], f"{r['median_ms']:.2f}",
            f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['vs_adagrad']:.2f}x",
            f"{r['vs_adam']:.2f}x",
            f"{r['state_mib']:.1f} ({r['state_bytes_per_param']:.0f})",
            f"{r['peak_mib']:.0f}", goal,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    configs = {"full": FULL, "quick": QUICK, "tiny": TINY}
    return _timing.run_alone(
        __doc__.split("\n")[0], run, table, configs, "1024 x 1024 only, fewer rounds", argv
    )


if __name__ == "__main__":
    main()
