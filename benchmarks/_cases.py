"""The methods a scenario compares, each built into a one-step callable.

Every method gets the same hyperparameters, optax's defaults for Adagrad:
lr = 0.01, tau = 0.1 and eps = 1e-7. optax and adagrad_jax put that eps inside
the square root (``adagrad_jax.adagrad(0.01, 0.1, eps=0.0, eps_root=1e-7)``);
PyTorch has no eps_root and puts it outside, which costs the same.

A case's `step()` runs one full training step (update and apply) on fixed
gradients and waits for the result. JAX steps are compiled ahead of time so
that compilation is measured apart from the step.

The embedding-table problem (a vocab x dim table, Zipf-distributed ids per
step, drawn by `devtools.models.draw_ids`) and its steps live here too, shared
by `benchmarks/sparse_embedding.py` and `benchmarks/regularized.py`:
`TableProblem`, `table_problem`, `row_sparse_step`, `dense_grad_step`,
`dense_grad_from_lookup_step` and `table_case`. The hyperparameters ``LR, TAU,
EPS`` come from `devtools.models`, which the whole-step benchmark shares with
the tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adagrad_jax
from benchmarks import _timing
from devtools import hlo
from devtools.models import EPS, ID_POOL, LR, TAU, draw_ids

F32_BYTES = 4
# A float32 step reads w, G and g and writes w and G.
MIN_BYTES_PER_ELEMENT = 5 * F32_BYTES

JAX_METHODS = ("optax", "adagrad_jax", "packed", "packed_split")
TORCH_METHODS = ("torch_foreach", "torch_fused")


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclasses.dataclass
class Case:
    """One method on one problem, ready to time."""

    method: str
    donate: bool | None  # None: not a JAX step (PyTorch updates in place)
    step: Callable[[], Any]
    info: dict[str, Any]


def unique_rows_bound(id_batches: Any, ids_per_step: int) -> int:
    """A `unique_rows` bound for steps over `id_batches` (arrays of ids): the largest
    distinct count of one array plus 10%, rounded up to a multiple of 1,024, at most
    the ids of a step."""
    largest = max(len(np.unique(ids)) for ids in id_batches)
    return min(-(-int(1.1 * largest) // 1024) * 1024, ids_per_step)


def make_data(shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[list, list]:
    """Float32 parameters and gradients as NumPy arrays (fixed seed)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    return params, grads


def _chain_tx(method: str) -> optax.GradientTransformation:
    if method == "optax":
        return optax.adagrad(LR, initial_accumulator_value=TAU, eps=EPS)
    return adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS)


def packed_optimizer(method: str) -> adagrad_jax.PackedAdagrad:
    return adagrad_jax.packed_adagrad(
        LR, TAU, eps=0.0, eps_root=EPS, interleave=(method == "packed")
    )


def chain_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """The per-leaf training step: update, then `optax.apply_updates`."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compile_step(method: str, params: list, grads: list, *, donate: bool):
    """(compiled step, its arguments without grads, seconds to trace+compile)."""
    if method in ("packed", "packed_split"):
        opt = packed_optimizer(method)
        state = opt.init(params)
        fn = jax.jit(opt.step, donate_argnums=(0,) if donate else ())
        compiled, seconds = _timing.timed(lambda: fn.lower(state, grads).compile())
        return compiled, [state], seconds
    tx = _chain_tx(method)
    state = tx.init(params)
    fn = jax.jit(chain_step(tx), donate_argnums=(0, 1) if donate else ())
    compiled, seconds = _timing.timed(lambda: fn.lower(params, state, grads).compile())
    return compiled, [params, state], seconds


def jax_case(method: str, params_np: list, grads: list, *, donate: bool) -> Case:
    params = [jnp.asarray(x) for x in params_np]
    compiled, box, seconds = compile_step(method, params, grads, donate=donate)
    n = sum(int(x.size) for x in params_np)
    smallest = min(int(x.size) for x in params_np)
    info = hlo.summary(compiled, n, smallest)
    info["compile_s"] = seconds

    def step():
        out = compiled(*box, grads)
        box[:] = list(out) if isinstance(out, tuple) else [out]
        jax.block_until_ready(jax.tree.leaves(box[0])[0])

    return Case(method, donate, step, info)


def torch_case(method: str, params_np: list, grads_np: list) -> Case:
    import torch  # optional: the `bench` extra

    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in params_np]
    for p, g in zip(params, grads_np):
        p.grad = torch.from_numpy(g.copy())
    flag = "fused" if method == "torch_fused" else "foreach"
    opt = torch.optim.Adagrad(
        params, lr=LR, initial_accumulator_value=TAU, eps=EPS, **{flag: True}
    )
    n = sum(int(x.size) for x in params_np)
    # Analytic: w, g and G live throughout; the foreach kernels also allocate
    # the denominator sqrt(G) + eps, one float per element.
    temp = n * F32_BYTES if flag == "foreach" else 0
    info = {"peak_bytes": 3 * n * F32_BYTES + temp, "peak_is_analytic": True}
    return Case(method, None, opt.step, info)


def stream_case(n: int) -> Case:
    """The machine's streaming limit: x += 1 in place, 8 bytes per element."""
    fn = jax.jit(lambda x: x + jnp.float32(1.0), donate_argnums=0)
    box = [jnp.zeros((n,), jnp.float32)]
    compiled = fn.lower(box[0]).compile()

    def step():
        box[0] = compiled(box[0])
        box[0].block_until_ready()

    return Case("stream", True, step, {"bytes_per_element": 2 * F32_BYTES})


def build(
    methods: list[str], shapes: list[tuple[int, ...]], *, donations: tuple[bool, ...]
) -> list[Case]:
    """Cases of every method (and donation setting, for JAX) on `shapes`."""
    params_np, grads_np = make_data(shapes)
    grads = [jnp.asarray(g) for g in grads_np]
    cases = []
    for method in methods:
        if method in TORCH_METHODS:
            cases.append(torch_case(method, params_np, grads_np))
            continue
        for donate in donations:
            if method == "packed_split" and not donate:
                continue  # shown donated only; "packed" shows the cost
            cases.append(jax_case(method, params_np, grads, donate=donate))
    return cases


def label(case: Case) -> str:
    if case.donate is None:
        return case.method
    return case.method + ("" if case.donate else " (no donation)")


# --- Embedding tables: k Zipf ids per step into a vocab x dim float32 table. ---

@dataclasses.dataclass
class TableProblem:
    """A table, ID_POOL batches of ids (cycled step after step) and row gradients."""

    vocab: int
    dim: int
    k: int
    table_np: np.ndarray  # (vocab, dim) float32
    ids_np: list[np.ndarray]  # ID_POOL arrays of k int32 ids
    values_np: np.ndarray  # (k, dim) float32, one row gradient per id
    unique_ids: float  # mean distinct ids per batch
    sparse_batches: list[tuple[jax.Array, jax.Array]]  # (ids, values) per batch

    def dense_grad(self) -> jax.Array:
        """The (vocab, dim) gradient of the first batch, as a dense array."""
        ids, values = self.sparse_batches[0]
        return adagrad_jax.RowSparse(ids, values).todense(self.vocab)


def table_problem(vocab: int, dim: int, k: int, seed: int = 0) -> TableProblem:
    """The table, ids and gradients of the sparse scenarios (fixed seed)."""
    rng = np.random.default_rng(seed)
    ids_np = [draw_ids(rng, vocab, k) for _ in range(ID_POOL)]
    values_np = rng.standard_normal((k, dim), dtype=np.float32)
    table_np = 0.01 * rng.standard_normal((vocab, dim), dtype=np.float32)
    values = jnp.asarray(values_np)
    return TableProblem(
        vocab, dim, k, table_np, ids_np, values_np,
        unique_ids=statistics.mean(len(np.unique(i)) for i in ids_np),
        sparse_batches=[(jnp.asarray(i), values) for i in ids_np],
    )


def row_sparse_step(tx: optax.GradientTransformation) -> Callable:
    """(params, state, ids, values) -> (params, state): RowSparse in, rows applied."""

    def step(params, state, ids, values):
        grads = {"table": adagrad_jax.RowSparse(ids, values)}
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state

    return step


def dense_grad_step(tx: optax.GradientTransformation) -> Callable:
    """(params, state, grad) -> (params, state): a dense (vocab, dim) gradient given."""

    def step(params, state, grad):
        updates, state = tx.update({"table": grad}, state, params)
        return optax.apply_updates(params, updates), state

    return step


def dense_grad_from_lookup_step(tx: optax.GradientTransformation) -> Callable:
    """(params, state, ids, values) -> (params, state): jax.grad builds the dense gradient."""

    def step(params, state, ids, values):
        # The gradient of a lookup, as jax.grad builds it in a model: V x D.
        grads = jax.grad(lambda p: jnp.vdot(p["table"][ids], values))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def table_case(step_fn: Callable, table: jax.Array, tx: optax.GradientTransformation,
               batches: list[tuple]) -> tuple[Callable[[int], None], dict[str, Any]]:
    """A callable running step i (batch i mod len) on a donated (table, state).

    Compiled ahead of time; the info dict has compile_s and, from XLA's memory
    analysis of the compiled step, temp_mb and aliased_mb.
    """
    params = {"table": table}
    state = tx.init(params)
    start = time.perf_counter()
    compiled = (
        jax.jit(step_fn, donate_argnums=(0, 1)).lower(params, state, *batches[0]).compile()
    )
    info: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    memory = compiled.memory_analysis()
    if memory is not None:
        info["temp_mb"] = memory.temp_size_in_bytes / 2**20
        info["aliased_mb"] = memory.alias_size_in_bytes / 2**20
    box = [params, state]

    def step(i: int) -> None:
        box[0], box[1] = compiled(box[0], box[1], *batches[i % len(batches)])
        jax.block_until_ready(box[0])

    return step, info
