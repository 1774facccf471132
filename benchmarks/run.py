"""Every benchmark scenario side by side, in one run.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks            # full run, a few minutes
    .venv/bin/python -m benchmarks --quick    # about a minute, smaller sizes
    .venv/bin/python -m benchmarks --only dense compile --rounds 30
    .venv/bin/python -m benchmarks --only whole_step   # whole training steps

Whole training steps come first (`benchmarks/whole_step.py`): an MLP in plain
JAX and in Flax NNX, a small transformer (134 arrays), a recommendation model
with row-sparse tables, each against `optax.adagrad` and a PyTorch twin, with
the optimizer's share of the step; then 1,000 leaves with `optax.flatten`.

Scenarios: dense single leaf (1M / 16M / 64M float32, with and without
donation, plus an in-place streaming measurement of the machine's bandwidth in
the same rounds); many leaves (1,000 x 4,096 and 200 x 65,536 against one leaf
of the same size); compile time for 1, 10, 100 and 1,000 leaves; peak memory of
a step; the sparse embedding scenario of `benchmarks/sparse_embedding.py`
when that file exists; and the regularized family (`proximal_adagrad`,
`adagrad_da`, `ftrl`) against `adagrad` / `sparse_adagrad`, dense and on the
table, from `benchmarks/regularized.py`; and beyond the diagonal
(`full_matrix_adagrad` against its block size, `shampoo` on 1024 x 1024 and
4096 x 1024 layers, ordinary and preconditioner steps, against `adagrad` and
`optax.adam`) from `benchmarks/beyond_diagonal.py`; table steps on lookups and
bags (pooled lookup, gradient, Adagrad) against FBGEMM's CPU TBE and the
PyTorch twin, from `benchmarks/tables.py`. Each compares `optax.adagrad`, `adagrad_jax.adagrad`
(per leaf), `adagrad_jax.packed_adagrad` (interleaved, and split into two
buffers) and, when PyTorch is installed, `torch.optim.Adagrad` with `foreach`
and with `fused`.

Writes `results/benchmark-<time>.json`, `results/latest.json`,
`results/latest.md` (the tables in markdown) and `results/latest.png` under the
output folder (default: benchmarks/results, which git ignores).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import traceback
from typing import Any

import jax
import numpy as np
import optax

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import (
    _cases,
    _report,
    _timing,
)
from benchmarks import beyond_diagonal as beyond_module
from benchmarks import regularized as regularized_module
from benchmarks import scaling as _scaling
from benchmarks import tables as tables_module
from benchmarks import whole_step as whole_step_module

MI = 2**20


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one run."""

    dense_sizes: tuple[int, ...]
    many_leaves: tuple[tuple[int, int], ...]  # (number of leaves, leaf size)
    compile_leaves: tuple[int, ...]
    compile_leaf_size: int
    compile_reps: int
    rounds: int
    sparse: dict[str, int]
    regularized: dict[str, int]
    beyond: dict[str, Any]
    whole_step: dict[str, Any]
    tables: dict[str, Any]


FULL = Config(
    dense_sizes=(1 * MI, 16 * MI, 64 * MI),
    many_leaves=((1000, 4096), (200, 65536)),
    compile_leaves=(1, 10, 100, 1000),
    compile_leaf_size=4096,
    compile_reps=2,
    rounds=20,
    sparse={"num_steps": 50, "vocab": 1_000_000, "dim": 64, "k": 4096},
    regularized=regularized_module.FULL,
    beyond=beyond_module.FULL,
    whole_step=whole_step_module.FULL,
    tables=tables_module.FULL,
)
QUICK = Config(
    dense_sizes=(1 * MI, 16 * MI),
    many_leaves=((1000, 4096),),
    compile_leaves=(1, 10, 100),
    compile_leaf_size=4096,
    compile_reps=1,
    rounds=10,
    sparse={"num_steps": 10, "vocab": 100_000, "dim": 32, "k": 1024},
    regularized=regularized_module.QUICK,
    beyond=beyond_module.QUICK,
    whole_step=whole_step_module.QUICK,
    tables=tables_module.QUICK,
)
TINY = Config(  # for the smoke test: exercises every code path in seconds
    dense_sizes=(4096,),
    many_leaves=((10, 256),),
    compile_leaves=(1, 3),
    compile_leaf_size=256,
    compile_reps=1,
    rounds=2,
    sparse={"num_steps": 2, "vocab": 1000, "dim": 8, "k": 16},
    regularized=regularized_module.TINY,
    beyond=beyond_module.TINY,
    whole_step=whole_step_module.TINY,
    tables=tables_module.TINY,
)
SCENARIOS = ("whole_step", "dense", "leaves", "compile", "sparse", "regularized", "tables",
             "beyond", "scaling")


def size_label(n: int) -> str:
    if n % MI == 0:
        return f"{n // MI}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def _add_ratios(rows: list[dict[str, Any]], key: str = "median_ms") -> None:
    """ratio_vs_optax / ratio_vs_torch_fused against the donated optax row etc."""
    optax_rows = [r for r in rows if r["method"] == "optax" and r["donate"]]
    torch_rows = [r for r in rows if r["method"] == "torch_fused"]
    for r in rows:
        r["ratio_vs_optax"] = r[key] / optax_rows[0][key] if optax_rows else None
        r["ratio_vs_torch_fused"] = r[key] / torch_rows[0][key] if torch_rows else None


def dense(config: Config, methods: list[str], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for n in config.dense_sizes:
        print(f"  dense {size_label(n)} ...", flush=True)
        cases = _cases.build(methods, [(n,)], donations=(True, False))
        stream = _cases.stream_case(n)
        # Steps without donation allocate and page-fault fresh outputs, which
        # slows whatever runs next: they get rounds of their own.
        donated = [c for c in cases if c.donate is not False] + [stream]
        times = _timing.round_robin({_cases.label(c): c.step for c in donated}, rounds=rounds)
        times.update(
            _timing.round_robin(
                {_cases.label(c): c.step for c in cases if c.donate is False}, rounds=rounds
            )
        )
        stream_ms = _timing.stats_ms(times["stream"])
        stream_gbps = stream.info["bytes_per_element"] * n / stream_ms["median_ms"] / 1e6
        stream_best_gbps = stream.info["bytes_per_element"] * n / stream_ms["min_ms"] / 1e6
        case_rows = []
        for c in cases:
            row = _row("dense", size_label(n), c, n, 1, times[_cases.label(c)])
            row["gbps"] = _cases.MIN_BYTES_PER_ELEMENT * n / row["median_ms"] / 1e6
            row["best_gbps"] = _cases.MIN_BYTES_PER_ELEMENT * n / row["min_ms"] / 1e6
            # Fastest round against fastest round: the least disturbed by load.
            row["pct_stream"] = 100 * row["best_gbps"] / stream_best_gbps
            case_rows.append(row)
        _add_ratios(case_rows)
        for r in case_rows:
            twin = [t for t in case_rows if t["method"] == r["method"] and t["donate"]]
            r["ratio_vs_donated"] = r["median_ms"] / twin[0]["median_ms"] if twin else None
        rows.extend(case_rows)
        rows.append(
            {
                "scenario": "stream",
                "case": size_label(n),
                "method": "stream",
                "label": "x += 1 in place (8 B/element)",
                "donate": True,
                "n_elements": n,
                "leaves": 1,
                "gbps": stream_gbps,
                "best_gbps": stream_best_gbps,
                **stream_ms,
            }
        )
        del cases, stream
    return rows


def many_leaves(config: Config, methods: list[str], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for count, size in config.many_leaves:
        total = count * size
        case_name = f"{count} x {size:,}"
        one_name = f"1 x {total:,}"
        print(f"  leaves {case_name} vs {one_name} ...", flush=True)
        many = _cases.build(methods, [(size,)] * count, donations=(True,))
        one = _cases.build(methods, [(total,)], donations=(True,))
        steps = {f"many/{_cases.label(c)}": c.step for c in many}
        steps.update({f"one/{_cases.label(c)}": c.step for c in one})
        times = _timing.round_robin(steps, rounds=rounds)
        many_rows = [
            _row("leaves", case_name, c, total, count, times[f"many/{_cases.label(c)}"])
            for c in many
        ]
        one_rows = [
            _row("leaves", one_name, c, total, 1, times[f"one/{_cases.label(c)}"])
            for c in one
        ]
        _add_ratios(many_rows)
        _add_ratios(one_rows)
        for m, o in zip(many_rows, one_rows):
            m["ratio_vs_one_leaf"] = m["median_ms"] / o["median_ms"]
            o["ratio_vs_one_leaf"] = 1.0
        for r in many_rows + one_rows:
            r["gbps"] = _cases.MIN_BYTES_PER_ELEMENT * total / r["median_ms"] / 1e6
        rows.extend(many_rows + one_rows)
        del many, one
    return rows


def compile_times(config: Config, methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    jax_methods = [m for m in methods if m in _cases.JAX_METHODS]
    for count in config.compile_leaves:
        print(f"  compile {count} leaves ...", flush=True)
        params_np, grads_np = _cases.make_data([(config.compile_leaf_size,)] * count)
        grads = [jax.numpy.asarray(g) for g in grads_np]
        seconds: dict[str, list[float]] = {m: [] for m in jax_methods}
        for _ in range(config.compile_reps):
            for m in jax_methods:
                params = [jax.numpy.asarray(x) for x in params_np]
                seconds[m].append(_cases.compile_step(m, params, grads, donate=True)[2])
        case_rows = []
        for m in jax_methods:
            s = seconds[m]
            case_rows.append(
                {
                    "scenario": "compile",
                    "case": f"{count} leaf" if count == 1 else f"{count} leaves",
                    "method": m,
                    "label": m,
                    "donate": True,
                    "leaves": count,
                    "n_elements": count * config.compile_leaf_size,
                    "median_s": statistics.median(s),
                    "min_s": min(s),
                    "max_s": max(s),
                    "reps": len(s),
                }
            )
        _add_ratios(case_rows, key="median_s")
        rows.extend(case_rows)
    return rows


def sparse(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from benchmarks/sparse_embedding.py, or why there are none."""
    if importlib.util.find_spec("benchmarks.sparse_embedding") is None:
        return [], "benchmarks/sparse_embedding.py does not exist yet; skipped."
    try:
        module = importlib.import_module("benchmarks.sparse_embedding")
        out = module.run(**config.sparse)
    except Exception:  # noqa: BLE001 - one scenario must not sink the run
        return [], "sparse_embedding.run failed:\n" + traceback.format_exc()
    rows = []
    for r in out:
        row = {"scenario": "sparse", "case": _sparse_case(config.sparse)}
        row.update({k: _jsonable(v) for k, v in dict(r).items()})
        rows.append(row)
    return rows, None


def regularized(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from benchmarks/regularized.py, or why there are none."""
    try:
        out = regularized_module.run(**config.regularized)
    except Exception:  # noqa: BLE001 - one scenario must not sink the run
        return [], "regularized.run failed:\n" + traceback.format_exc()
    rows = [{"scenario": "regularized", **{k: _jsonable(v) for k, v in r.items()}}
            for r in out]
    return rows, None


def tables(config: Config, torch: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from benchmarks/tables.py (ours against FBGEMM's TBE and PyTorch), or why none."""
    try:
        out, notes = tables_module.run(**config.tables, torch=torch)
    except Exception:  # noqa: BLE001 - one scenario must not sink the run
        return [], "tables.run failed:\n" + traceback.format_exc()
    rows = [{"scenario": "tables", **{k: _jsonable(v) for k, v in r.items()}} for r in out]
    return rows, "\n".join(notes) or None


def whole_step(config: Config, torch: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from benchmarks/whole_step.py (whole training steps), or why there are none."""
    try:
        out, notes = whole_step_module.run(config.whole_step, torch=torch)
    except Exception:  # noqa: BLE001 - report and go on with the other scenarios
        return [], "whole_step.run failed:\n" + traceback.format_exc()
    rows = [{k: _jsonable(v) for k, v in r.items()} for r in out]
    return rows, "\n".join(notes) or None


def beyond(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from benchmarks/beyond_diagonal.py, or why there are none."""
    try:
        out = beyond_module.run(**config.beyond)
    except Exception:  # noqa: BLE001 - one scenario must not sink the run
        return [], "beyond_diagonal.run failed:\n" + traceback.format_exc()
    rows = [{"scenario": "beyond", **{k: _jsonable(v) for k, v in r.items()}} for r in out]
    return rows, None


def _sparse_case(sparse: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sparse.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, jax.Array)):
        return np.asarray(value).item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _row(
    scenario: str, case: str, c: _cases.Case, n: int, leaves: int, seconds: list[float]
) -> dict[str, Any]:
    row = {
        "scenario": scenario,
        "case": case,
        "method": c.method,
        "label": _cases.label(c),
        "donate": c.donate,
        "n_elements": n,
        "leaves": leaves,
        **_timing.stats_ms(seconds),
    }
    row.update({k: v for k, v in c.info.items() if k != "bytes_per_element"})
    row["times_ms"] = [1e3 * s for s in seconds]
    return row


def metadata(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "mode": args.mode,
        "config": dataclasses.asdict(config),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "hyperparameters": {"learning_rate": _cases.LR, "tau": _cases.TAU, "eps": _cases.EPS},
    }
    if hasattr(os, "getloadavg"):
        meta["load_average_at_start"] = os.getloadavg()
    if _cases.torch_available():
        import torch

        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
    return meta


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="smaller sizes and fewer rounds (about a minute)")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="toy sizes, for the smoke test")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="scenarios to run (default: all)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per scenario (default: 20, quick 10)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent / "results",
                        help="output folder (default: benchmarks/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = {"full": FULL, "quick": QUICK, "tiny": TINY}[args.mode]
    rounds = args.rounds or config.rounds
    methods = list(_cases.JAX_METHODS)
    if _cases.torch_available() and not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        methods += list(_cases.TORCH_METHODS)
    results: dict[str, Any] = {"meta": metadata(args, config), "rows": [], "notes": []}
    results["meta"]["rounds"] = rounds
    if "torch_fused" not in methods:
        results["notes"].append("PyTorch not installed (or --no-torch): torch rows left out.")
    print(f"adagrad_jax benchmarks ({args.mode}), backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPU cores", flush=True)
    scenarios = {
        "dense": lambda: dense(config, methods, rounds),
        "leaves": lambda: many_leaves(config, methods, rounds),
        "compile": lambda: compile_times(config, methods),
        "sparse": lambda: sparse(config),
        "regularized": lambda: regularized(config),
        "tables": lambda: tables(config, "torch_fused" in methods),
        "beyond": lambda: beyond(config),
        "whole_step": lambda: whole_step(config, "torch_fused" in methods),
        # benchmarks/scaling.py: a row-sharded table on 1-8 simulated devices (a note).
        "scaling": lambda: ([], _scaling.markdown(_scaling.run(quick=args.mode != "full"))),
    }
    results["meta"]["seconds"] = {}
    for name in SCENARIOS:
        if name not in args.only:
            continue
        out, seconds = _timing.timed(scenarios[name])
        rows, note = (out if name in ("sparse", "regularized", "tables", "beyond", "whole_step",
                                     "scaling")
                      else (out, None))
        results["rows"] += rows
        if note:
            results["notes"].append(note)
        results["meta"]["seconds"][name] = seconds
        print(f"  {name}: {seconds:.1f} s", flush=True)
    if hasattr(os, "getloadavg"):
        results["meta"]["load_average_at_end"] = os.getloadavg()

    markdown = _report.markdown(results)
    print()
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=1, default=_jsonable)
    (args.out / f"benchmark-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    (args.out / "latest.md").write_text(markdown)
    written = [args.out / "latest.json", args.out / "latest.md"]
    if not args.no_plot:
        png = _report.plot(results, args.out / "latest.png")
        if png is not None:
            written.append(png)
    print("wrote " + ", ".join(str(p) for p in written))
    return results


if __name__ == "__main__":
    main()
