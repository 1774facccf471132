"""Table steps on lookups and bags: ours against FBGEMM's TBE and the PyTorch twin (issue 17).

A full step = pooled lookup (sum over each bag) of Zipf-distributed ids
(exponent 1.2, `devtools.models.draw_ids`) in a vocab x 64 float32 table,
loss = sum(pooled * upstream) with a fixed upstream gradient, the gradient,
and an Adagrad update of the touched rows. Cases: 4,096 single-id lookups,
2,048 bags of 20 ids and 2,048 bags of 50 ids; on a 1,000,000-row table and
on a 10,000,000-row one; per-coordinate and row-wise accumulators. Methods,
timed round-robin in one process (one step of each per round, order rotated):

- ``ours``: ``jax.jit`` of `adagrad_jax.value_and_row_grad` +
  ``adagrad_jax.adagrad(row_wise=False/True)`` + `adagrad_jax.apply_updates`,
  table and state donated; every JAX method runs with ``unique_rows`` set to
  the case's largest distinct count + 10%, rounded up to 1,024
  (`unique_rows_bound`);
- ``ours_no_loss``: the same step with the loss dropped: XLA then removes the
  forward gather (and, on the CPU, the two whole-table copies the forward
  read costs: ``table_copies``);
- ``fbgemm``: FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` on the CPU,
  ``EXACT_ADAGRAD`` / ``EXACT_ROWWISE_ADAGRAD``, pooling SUM, the update
  fused into the backward pass, when ``fbgemm_gpu`` imports (skipped, with a
  note, when it does not, and on a GPU backend: its CPU wheel has no GPU TBE);
- ``torch``: the PyTorch twin, ``nn.EmbeddingBag(mode="sum", sparse=True)`` +
  ``torch.optim.Adagrad`` (per-coordinate only: PyTorch has no row-wise
  Adagrad). On a GPU backend it runs on the GPU when PyTorch sees one;
- the regularized members ``proximal_adagrad``, ``adagrad_da`` and ``ftrl``
  (l1 = l2 = 1e-3, `benchmarks/regularized.py`'s settings) in the same step
  with the loss dropped, against ``ours_no_loss`` (so that the two table
  copies do not hide the optimizers' costs), on the per-coordinate groups of
  the tables in ``member_vocabs`` (the 10M table would need up to four 2.4 GiB
  state arrays per member).

Hyperparameters: lr = 0.01, initial accumulator 0.1, eps = 1e-7 (inside the
root for ours, outside for FBGEMM and PyTorch, which costs the same). Rows
carry the ratios of medians: ``vs_fbgemm`` and ``vs_torch`` (ours / peer)
and ``vs_adagrad`` (member / ours with the loss dropped, per-coordinate). JAX arrays live on JAX's
default device, so on a GPU the same code times device steps
(``block_until_ready`` after each).

Run ``python benchmarks/tables.py [--quick | --tiny] [--markdown FILE]``, or
``python -m benchmarks --only tables``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/tables.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from benchmarks import _cases, _timing
from benchmarks import regularized as regularized_module
from devtools import hlo
from devtools.models import EPS, ID_POOL, LR, TAU, draw_ids

# proximal_adagrad, adagrad_da, ftrl, and the two-slot members with stack_slots=True
MEMBERS = regularized_module.REGULARIZED + regularized_module.STACKED_MEMBERS
TORCH_WARMUP = 5  # PyTorch's first CPU steps are 10 to 100 times slower

# (name, bags per batch, ids per bag)
CASES = (("4,096 single-id lookups", 4096, 1), ("2,048 bags of 20", 2048, 20),
         ("2,048 bags of 50", 2048, 50))
FULL = {"vocabs": (1_000_000, 10_000_000), "dim": 64, "cases": CASES, "rounds": 40,
        "member_vocabs": (1_000_000,)}
QUICK = {"vocabs": (1_000_000,), "dim": 64, "cases": CASES, "rounds": 12,
         "member_vocabs": (1_000_000,)}
TINY = {"vocabs": (1000,), "dim": 8, "cases": (("16 lookups", 16, 1), ("8 bags of 4", 8, 4)),
        "rounds": 3, "member_vocabs": (1000,)}


@dataclasses.dataclass
class Batches:
    """ID_POOL id batches of one case (cycled step after step) and the upstream gradient."""

    name: str
    batch: int
    bag: int
    ids_np: list[np.ndarray]  # (batch, bag) int32
    upstream_np: np.ndarray  # (batch, dim) float32
    unique_ids: float  # mean distinct ids per batch


def make_batches(name: str, batch: int, bag: int, vocab: int, dim: int, seed: int = 0) -> Batches:
    rng = np.random.default_rng(seed)
    ids = [draw_ids(rng, vocab, batch * bag).reshape(batch, bag) for _ in range(ID_POOL)]
    upstream = rng.standard_normal((batch, dim), dtype=np.float32)
    return Batches(name, batch, bag, ids, upstream,
                   statistics.mean(len(np.unique(i)) for i in ids))


def pooled_loss(rows: dict[str, jax.Array], upstream: jax.Array) -> jax.Array:
    """sum(pooled * upstream), pooled = the sum of each bag's rows."""
    return jnp.sum(rows["table"].sum(axis=1) * upstream)


def table_step(tx, *, return_loss: bool = True) -> Callable:
    """(params, state, ids, upstream) -> (params, state, loss): the full step of ours.

    The loss is returned (as a training step reports it) so that the forward
    lookup runs. With ``return_loss=False`` the step returns a zero instead
    and XLA removes the forward gather (the gradient of sum(pooled *
    upstream) does not read the rows): the ``ours_no_loss`` rows, which is
    what a step that drops its loss costs. On XLA:CPU the forward read of the
    donated table, with a scatter whose values do not depend on it, makes XLA
    copy the whole table twice per step (benchmarks/tables_profile.md).
    """
    grad_fn = adagrad_jax.value_and_row_grad(pooled_loss)

    def step(params, state, ids, upstream):
        loss, grads = grad_fn(params, {"table": ids}, upstream)
        updates, state = tx.update(grads, state, params)
        if not return_loss:
            loss = jnp.zeros((), loss.dtype)
        return adagrad_jax.apply_updates(params, updates), state, loss

    return step


def unique_rows_bound(b: Batches) -> int:
    """The `unique_rows` bound of a case (`_cases.unique_rows_bound`)."""
    return _cases.unique_rows_bound(b.ids_np, b.batch * b.bag)


def optimizer(method: str, row_wise: bool, unique_rows: int | None = None):
    if method == "ours":
        return adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS, row_wise=row_wise,
                                   unique_rows=unique_rows)
    return regularized_module.optimizer(method, unique_rows=unique_rows)


def _jax_method(make_tx: Callable, table_np: np.ndarray, *, return_loss: bool = True,
                dtype: Any = None) -> Callable:
    """A builder: case -> (step(i), info), on one donated table and state.

    ``make_tx(unique_rows)`` builds the optimizer; each case's step uses the
    case's `unique_rows_bound` (the state does not depend on it). `dtype`: the
    table's (default: `table_np`'s).
    """
    params = {"table": jnp.asarray(table_np, dtype)}
    box = [params, jax.jit(make_tx(None).init)(params)]

    def build(b: Batches):
        bound = unique_rows_bound(b)
        fn = jax.jit(table_step(make_tx(bound), return_loss=return_loss), donate_argnums=(0, 1))
        ids = [jnp.asarray(i) for i in b.ids_np]
        upstream = jnp.asarray(b.upstream_np)
        start = time.perf_counter()
        compiled = fn.lower(box[0], box[1], ids[0], upstream).compile()
        info = {"compile_s": time.perf_counter() - start, "unique_rows": bound,
                "table_copies": sum(op == "copy" for op, _ in hlo.loops_over(
                    compiled.as_text(), int(np.prod(table_np.shape))))}

        def step(i: int) -> None:
            box[0], box[1], loss = compiled(box[0], box[1], ids[i % len(ids)], upstream)
            jax.block_until_ready((box[0], loss))

        return step, info

    return build


def _torch_device() -> str | None:
    """Where the PyTorch twin runs: the CPU on a CPU backend, a GPU on a GPU backend."""
    if importlib.util.find_spec("torch") is None:
        return None
    if jax.default_backend() == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _torch_method(table_np: np.ndarray, device: str) -> Callable:
    """nn.EmbeddingBag(mode="sum", sparse=True) + torch.optim.Adagrad."""
    import torch  # optional: the `bench` extra

    weight = torch.from_numpy(table_np.copy()).to(device)
    bag = torch.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode="sum", sparse=True)
    opt = torch.optim.Adagrad(bag.parameters(), lr=LR, initial_accumulator_value=TAU, eps=EPS)

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def build(b: Batches):
        ids = [torch.from_numpy(i.astype(np.int64)).to(device) for i in b.ids_np]
        upstream = torch.from_numpy(b.upstream_np).to(device)

        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            (bag(ids[i % len(ids)]) * upstream).sum().backward()
            opt.step()
            sync()

        return step, {"device": device, "threads": torch.get_num_threads()}

    return build


def fbgemm_available() -> bool:
    try:
        return importlib.util.find_spec("fbgemm_gpu") is not None
    except (ImportError, ValueError):
        return False


def _fbgemm_method(table_np: np.ndarray, row_wise: bool, **options: Any) -> Callable:
    """FBGEMM's CPU TBE, exact (row-wise) Adagrad fused into the backward pass.

    `options` go to the TBE's constructor (``weight_decay``, ``weight_decay_mode``).
    """
    import fbgemm_gpu  # noqa: F401 - registers torch.ops.fbgemm
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    vocab, dim = table_np.shape
    emb = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(vocab, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=(EmbOptimType.EXACT_ROWWISE_ADAGRAD if row_wise
                   else EmbOptimType.EXACT_ADAGRAD),
        learning_rate=LR,
        eps=EPS,
        pooling_mode=PoolingMode.SUM,
        weights_precision=SparseType.FP32,
        **options,
    )
    with torch.no_grad():
        emb.split_embedding_weights()[0].copy_(torch.from_numpy(table_np))
        for state in emb.split_optimizer_states()[0]:
            state.fill_(TAU)

    def build(b: Batches):
        ids = [torch.from_numpy(i.reshape(-1).astype(np.int64)) for i in b.ids_np]
        offsets = torch.arange(0, b.batch * b.bag + 1, b.bag, dtype=torch.int64)
        upstream = torch.from_numpy(b.upstream_np)

        def step(i: int) -> None:
            (emb(ids[i % len(ids)], offsets) * upstream).sum().backward()

        return step, {"device": "cpu", "threads": torch.get_num_threads()}

    return build


def _table_name(vocab: int, dim: int) -> str:
    return f"{vocab / 1e6:g}M x {dim}" if vocab >= 1_000_000 else f"{vocab:,} x {dim}"


def _group(vocab: int, dim: int, row_wise: bool, cases: tuple, rounds: int, *,
           members: bool, fbgemm: bool, torch_device: str | None, seed: int
           ) -> list[dict[str, Any]]:
    """Every case of one table and accumulator kind, timed round-robin.

    On the tables with the members (``members``) every method runs in one
    round-robin. On the others (the 10M table: 2.4 GiB per table-sized array)
    the methods run in rounds of their own, each built and freed in turn:
    ours with the loss dropped against FBGEMM, then against PyTorch, then ours
    against ours with the loss dropped; each row names the peers that shared
    its rounds (``peers``), and ratios are taken inside those rounds only.
    """
    accumulator = "row-wise" if row_wise else "per-coordinate"
    print(f"  tables: {_table_name(vocab, dim)}, {accumulator} ...", flush=True)
    table_np = 0.01 * np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)
    factories: dict[str, Callable[[], Callable]] = {
        "ours": lambda: _jax_method(lambda u: optimizer("ours", row_wise, u), table_np),
        "ours_no_loss": lambda: _jax_method(lambda u: optimizer("ours", row_wise, u), table_np,
                                            return_loss=False),
    }
    if members and not row_wise:  # compared with ours_no_loss: no table copies in either
        for m in MEMBERS:
            factories[m] = lambda m=m: _jax_method(lambda u, m=m: optimizer(m, False, u),
                                                   table_np, return_loss=False)
    peers = []
    if fbgemm:
        peers.append("fbgemm")
        factories["fbgemm"] = lambda: _fbgemm_method(table_np, row_wise)
    if torch_device is not None and not row_wise:
        peers.append("torch")
        factories["torch"] = lambda: _torch_method(table_np, torch_device)
    if members:
        pairings = [list(factories)]
    else:
        pairings = [["ours_no_loss", p] for p in peers] + [["ours", "ours_no_loss"]]
    batches = [make_batches(name, batch, bag, vocab, dim, seed + 1)
               for name, batch, bag in cases]
    rows = []
    for pairing in pairings:
        builders = {m: factories[m]() for m in pairing}
        for b in batches:
            rows += _case_rows(b, builders, rounds, vocab, dim, accumulator, pairing)
        del builders
        gc.collect()
    return rows


def _case_rows(b: Batches, builders: dict[str, Callable], rounds: int, vocab: int, dim: int,
               accumulator: str, pairing: list[str]) -> list[dict[str, Any]]:
    """One case's round-robin of `builders`; rows with the ratios inside these rounds."""
    steps, infos = {}, {}
    for method, build in builders.items():
        steps[method], infos[method] = build(b)
    with warnings.catch_warnings():
        # PyTorch's sparse Adagrad warns once that it builds unchecked sparse tensors.
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        for method in ("fbgemm", "torch"):
            for i in range(TORCH_WARMUP if method in steps else 0):
                steps[method](i)
        times = _timing.round_robin_tiered(steps, {}, rounds=rounds, slow_every=1)
    rows = []
    for method in steps:
        rows.append({
            "case": b.name, "table": _table_name(vocab, dim), "vocab": vocab, "dim": dim,
            "accumulator": accumulator, "method": method, "label": LABELS[method],
            "peers": pairing, "ids": b.batch * b.bag, "unique_ids": b.unique_ids,
            **_timing.stats_ms(times[method]), **infos[method],
            "times_ms": [1e3 * s for s in times[method]],
        })
    medians = {r["method"]: r["median_ms"] for r in rows}
    for r in rows:
        if r["method"] in ("ours", "ours_no_loss"):
            ms = r["median_ms"]
            r["vs_fbgemm"] = ms / medians["fbgemm"] if "fbgemm" in medians else None
            r["vs_torch"] = ms / medians["torch"] if "torch" in medians else None
        if r["method"] in MEMBERS:
            r["vs_adagrad"] = r["median_ms"] / medians["ours_no_loss"]
    return rows


LABELS = {
    "ours": "adagrad_jax (value_and_row_grad + adagrad + apply_updates)",
    "ours_no_loss": "adagrad_jax, loss dropped (XLA removes the forward gather)",
    "fbgemm": "FBGEMM CPU TBE (fused)",
    "torch": "torch EmbeddingBag(sum, sparse) + Adagrad",
    "proximal_adagrad": "adagrad_jax.proximal_adagrad(l1, l2)",
    "adagrad_da": "adagrad_jax.adagrad_da(l1, l2)",
    "ftrl": "adagrad_jax.ftrl(l1, l2)",
    "adagrad_da[stack_slots=True]": "adagrad_jax.adagrad_da(l1, l2, stack_slots=True)",
    "ftrl[stack_slots=True]": "adagrad_jax.ftrl(l1, l2, stack_slots=True)",
}


def run(vocabs=FULL["vocabs"], dim: int = FULL["dim"], cases=CASES, rounds: int = FULL["rounds"],
        *, member_vocabs=FULL["member_vocabs"], torch: bool = True, seed: int = 0
        ) -> tuple[list[dict[str, Any]], list[str]]:
    """Times every (table, accumulator, case); returns (rows, notes).

    Args:
      vocabs: table row counts, each a group of its own. Default 1M and 10M.
      dim: row width. Default 64.
      cases: (name, bags, ids per bag) triples. Default `CASES`.
      rounds: round-robin rounds per case. Default 40.
      member_vocabs: the tables on which the regularized members run too.
      torch: whether to time the PyTorch twin (when PyTorch is installed).
      seed: seed of the tables, ids and upstream gradients.

    Returns:
      Rows with case, table, accumulator, method, label, ids, unique_ids,
      median_ms, min_ms, max_ms, rounds, times_ms, compile_s (ours and
      members), vs_fbgemm / vs_torch (ours / peer, by median; None where the
      peer is absent) and vs_adagrad (member / ours); and notes saying which
      peers were left out and why.
    """
    notes = []
    fbgemm = fbgemm_available() and jax.default_backend() == "cpu"
    if not fbgemm:
        notes.append("tables: FBGEMM rows left out: " + (
            "fbgemm_gpu is not installed (pip install fbgemm-gpu-cpu==1.8.0)."
            if not fbgemm_available() else
            f"its CPU TBE is not timed against a {jax.default_backend()} backend."))
    torch_device = _torch_device() if torch else None
    if torch_device is None:
        notes.append("tables: PyTorch twin left out (not installed, --no-torch, or no GPU"
                     " for it on a GPU backend).")
    rows = []
    for vocab in vocabs:
        for row_wise in (False, True):
            rows += _group(vocab, dim, row_wise, tuple(cases), rounds,
                           members=vocab in member_vocabs, fbgemm=fbgemm,
                           torch_device=torch_device, seed=seed)
    return rows, notes


def _x(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[dict[str, Any]]) -> str:
    """The main table (ours, FBGEMM, PyTorch) and the members' table, in markdown."""
    lines = ["| table | case | accumulator | ours ms | FBGEMM ms | torch ms | ours / FBGEMM"
             " | ours / torch | ours, loss dropped ms | loss dropped / FBGEMM | loss dropped"
             " / torch | table copies in ours | distinct ids |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["table"], r["case"], r["accumulator"]) for r in rows))
    for key in keys:
        same = [r for r in rows if (r["table"], r["case"], r["accumulator"]) == key]
        by = {r["method"]: dict(r) for r in reversed(same)}  # the first row of each method
        for r in same:  # ours ran once per peer where the peers ran apart
            if r["method"] in ("ours", "ours_no_loss"):
                for ratio in ("vs_fbgemm", "vs_torch"):
                    by[r["method"]][ratio] = by[r["method"]].get(ratio) or r.get(ratio)
        ours, no_loss = by["ours"], by.get("ours_no_loss")
        dropped = "- | - | -" if no_loss is None else (
            f"{no_loss['median_ms']:.3f} | {_x(no_loss.get('vs_fbgemm'))} |"
            f" {_x(no_loss.get('vs_torch'))}")

        def ms(m: str, by: dict = by) -> str:
            r = by.get(m)
            return "-" if r is None else (
                f"{r['median_ms']:.3f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})")

        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {ms('ours')} | {ms('fbgemm')} |"
                     f" {ms('torch')} | {_x(ours.get('vs_fbgemm'))} | {_x(ours.get('vs_torch'))}"
                     f" | {dropped} | {ours['table_copies']} | {ours['unique_ids']:,.0f} of"
                     f" {ours['ids']:,} |")
    member_rows = [r for r in rows if r["method"] in MEMBERS]
    if member_rows:
        lines += ["", "| table | case | adagrad ms (loss dropped) | " + " | ".join(
            f"{m} ms (vs adagrad)" for m in MEMBERS) + " |", "|---" * (3 + len(MEMBERS)) + "|"]
        for key in dict.fromkeys((r["table"], r["case"]) for r in member_rows):
            by = {r["method"]: r for r in rows if (r["table"], r["case"]) == key
                  and r["accumulator"] == "per-coordinate"}
            cells = [f"{by[m]['median_ms']:.3f} ({_x(by[m]['vs_adagrad'])})" for m in MEMBERS]
            lines.append(f"| {key[0]} | {key[1]} | {by['ours_no_loss']['median_ms']:.3f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """The machine, the date and the load average, for the header of a report."""
    cpu = platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
    versions = f"jax {jax.__version__}"
    if importlib.util.find_spec("torch") is not None:
        import torch

        versions += f", torch {torch.__version__}"
    if fbgemm_available():
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("fbgemm-gpu-cpu", "fbgemm-gpu"):
            try:
                versions += f", {dist} {version(dist)}"
                break
            except PackageNotFoundError:
                continue
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{date}; {cpu}, {os.cpu_count()} cores; backend {jax.default_backend()}"
            f" ({jax.devices()[0].device_kind}); {versions}; load average (1/5/15 min) {load}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1M table only, 12 rounds")
    mode.add_argument("--tiny", action="store_true", help="toy sizes, for the smoke test")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--vocabs", type=int, nargs="+", default=None)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--markdown", type=pathlib.Path, default=None,
                        help="also write the tables, with the machine and load, to this file")
    args = parser.parse_args(argv)
    config = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    if args.rounds:
        config["rounds"] = args.rounds
    if args.vocabs:
        config["vocabs"] = tuple(args.vocabs)
    before = machine()
    print(before, flush=True)
    rows, notes = run(**config, torch=not args.no_torch)
    text = "\n".join([f"Start: {before}", f"End: {machine()}", "", table(rows), ""]
                     + [f"Note: {n}" for n in notes])
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
