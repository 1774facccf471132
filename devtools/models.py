"""The models and data of the whole-step benchmark, shared with the structural tests.

Used by `benchmarks/whole_step.py` (timed) and `tests/test_whole_step_structure.py`
(compiled once, donated buffers aliased, no table-sized temporary):

- an MLP classifier 784-W-W-10 (`mlp_params`, `mlp_loss`);
- a pre-norm decoder transformer (`transformer_params`, `transformer_loss`);
- a recommendation model with embedding tables and a dense tower
  (`recsys_problem`, `recsys_row_loss` for row gradients, `recsys_dense_loss`);
- the Zipf id draw of the table problems (`draw_ids`, `ID_POOL`);
- the optimizer each benchmark method name stands for (`optimizer`), all with
  optax's Adagrad defaults ``LR, TAU, EPS``.

Parameters come back as NumPy arrays (fixed seeds).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adagrad_jax

# optax's defaults for Adagrad, given to every method: optax and adagrad_jax put eps
# inside the root (adagrad_jax.adagrad(0.01, 0.1, eps=0.0, eps_root=1e-7)).
LR, TAU, EPS = 0.01, 0.1, 1e-7


def optimizer(method: str) -> optax.GradientTransformation:
    """The GradientTransformation a method name stands for."""
    if method == "optax":
        return optax.adagrad(LR, initial_accumulator_value=TAU, eps=EPS)
    if method == "adagrad_jax":
        return adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS)
    if method == "adagrad_jax_flat":
        return optax.flatten(adagrad_jax.adagrad(LR, TAU, eps=0.0, eps_root=EPS))
    if method == "no_opt":
        return optax.scale(-LR)
    raise ValueError(f"unknown method {method!r}")


# --- Embedding tables: Zipf ids -------------------------------------------------

ZIPF_EXPONENT = 1.2
ID_POOL = 32  # distinct id batches, cycled


def draw_ids(rng: np.random.Generator, vocab: int, k: int) -> np.ndarray:
    """k ids with many repeats: a Zipf draw (exponent 1.2) folded into the vocabulary."""
    return ((rng.zipf(ZIPF_EXPONENT, k) - 1) % vocab).astype(np.int32)


# --- The MLP classifier ---------------------------------------------------------


def dense_init(rng: np.random.Generator, fan_in: int, fan_out: int) -> tuple:
    w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.float32(np.sqrt(fan_in))
    return w, np.zeros((fan_out,), np.float32)


def mlp_params(width: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sizes = [(784, width), (width, width), (width, 10)]
    return {f"l{i}": dict(zip(("w", "b"), dense_init(rng, *s))) for i, s in enumerate(sizes)}


def mlp_loss(params, x, y):
    h = jax.nn.relu(x @ params["l0"]["w"] + params["l0"]["b"])
    h = jax.nn.relu(h @ params["l1"]["w"] + params["l1"]["b"])
    logits = h @ params["l2"]["w"] + params["l2"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --- A small transformer (many leaves) ------------------------------------------


def transformer_params(layers: int, d: int, mlp: int, vocab: int, seq: int, seed: int = 0
                       ) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        return dict(zip(("w", "b"), dense_init(rng, fan_in, fan_out)))

    def norm():
        return {"scale": np.ones((d,), np.float32), "bias": np.zeros((d,), np.float32)}

    blocks = [{"ln1": norm(), "q": dense(d, d), "k": dense(d, d), "v": dense(d, d),
               "o": dense(d, d), "ln2": norm(), "up": dense(d, mlp), "down": dense(mlp, d)}
              for _ in range(layers)]
    return {
        "embed": 0.02 * rng.standard_normal((vocab, d), dtype=np.float32),
        "pos": 0.02 * rng.standard_normal((seq, d), dtype=np.float32),
        "blocks": blocks, "ln_f": norm(), "head": dense(d, vocab),
    }


def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def transformer_loss(params, tokens, targets, *, heads: int):
    b, t = tokens.shape
    x = params["embed"][tokens] + params["pos"][:t]
    d = x.shape[-1]
    mask = jnp.tril(jnp.ones((t, t), bool))
    for blk in params["blocks"]:
        h = layer_norm(x, blk["ln1"])
        q, k, v = ((h @ blk[n]["w"] + blk[n]["b"]).reshape(b, t, heads, d // heads)
                   for n in ("q", "k", "v"))
        att = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(jnp.float32(d // heads))
        att = jax.nn.softmax(jnp.where(mask, att, jnp.float32(-1e9)), axis=-1)
        out = jnp.einsum("bhqk,bkhc->bqhc", att, v).reshape(b, t, d)
        x = x + out @ blk["o"]["w"] + blk["o"]["b"]
        h = layer_norm(x, blk["ln2"])
        x = x + jax.nn.gelu(h @ blk["up"]["w"] + blk["up"]["b"]) @ blk["down"]["w"] \
            + blk["down"]["b"]
    logits = layer_norm(x, params["ln_f"]) @ params["head"]["w"] + params["head"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# --- The recommendation model (row-sparse tables, dense tower) -----------------


def recsys_problem(cfg: dict[str, Any], seed: int = 0):
    rng = np.random.default_rng(seed)
    dim, bag, batch = cfg["dim"], cfg["bag"], cfg["batch"]
    tables = {f"t{i}": 0.01 * rng.standard_normal((v, dim), dtype=np.float32)
              for i, v in enumerate(cfg["vocabs"])}
    sizes = [dim * len(tables), *cfg["tower"], 1]
    tower = {f"l{i}": dict(zip(("w", "b"), dense_init(rng, a, b)))
             for i, (a, b) in enumerate(itertools.pairwise(sizes))}
    batches = []
    for _ in range(ID_POOL):
        ids = {name: draw_ids(rng, t.shape[0], batch * bag).reshape(batch, bag)
               for name, t in tables.items()}
        batches.append((ids, rng.integers(0, 2, batch).astype(np.float32)))
    return {"tables": tables, "tower": tower}, batches


def _tower(tower, pooled):
    h = jnp.concatenate(pooled, axis=-1)
    n = len(tower)
    for i in range(n):
        h = h @ tower[f"l{i}"]["w"] + tower[f"l{i}"]["b"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h[:, 0]


def recsys_row_loss(rows, y):
    """rows["tables"][name]: the looked-up rows, (batch, bag, dim)."""
    pooled = [rows["tables"][n].mean(axis=1) for n in sorted(rows["tables"])]
    return optax.sigmoid_binary_cross_entropy(_tower(rows["tower"], pooled), y).mean()


def recsys_dense_loss(params, ids, y):
    pooled = [params["tables"][n][ids[n]].mean(axis=1) for n in sorted(params["tables"])]
    return optax.sigmoid_binary_cross_entropy(_tower(params["tower"], pooled), y).mean()
