"""Independent NumPy float64 references, written straight from documented rules.

Nothing here imports adagrad_jax: each function transcribes one formula.
  * `adagrad_step`: ARCHITECTURE.md, rule 1 (the rule this package documents).
  * `torch_step`, `keras3_step`, `legacy_keras_step`, `tf1_step`,
    `optax_step`: each peer's documented update (ARCHITECTURE.md, rule 2).
  * `fbgemm_exact_adagrad_step`: FBGEMM's exact (row-wise) Adagrad on a table.
  * `fbgemm_rowwise_step`, `fbgemm_exact_step`: the same with FBGEMM's weight-decay
    modes and row max-norm (`adagrad_jax.compat`'s FBGEMM presets).
  * `sm3_step`: SM3-II (Anil et al. 2019, one cover per axis) with optax's eps
    and momentum.
  * `adagrad_momentum_step`: Adagrad with momentum as TPU embeddings (SparseCore)
    define it.
Arrays are float64 (complex128 for complex); `t` counts steps from 1.

The conformance suite drives every rule through a `Reference`: a rule over the
list of a tree's parameter leaves with a state of its own. `leafwise` turns a
per-coordinate step ``(w, g, acc, t) -> (w, acc, u)`` into one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Reference:
    """A float64 NumPy rule over the list of a tree's parameter leaves.

    Attributes:
      init: ``init(ws) -> state`` for the list of starting parameters.
      step: ``step(ws, gs, state, t) -> (ws, state)``, t counting from 1.
      accumulators: ``accumulators(state) -> list`` of each leaf's sum of
        squared gradients, to compare with the optimizer's, or None.
    """

    init: Callable[[list], Any]
    step: Callable[[list, list, Any, int], tuple[list, Any]]
    accumulators: Callable[[Any], list] | None = None


def leafwise(step, *, tau, **hyper) -> Reference:
    """A `Reference` from a per-leaf ``step(w, g, acc, t, **hyper) -> (w, acc, u)``
    whose state is one accumulator per leaf, started at `tau`."""

    def init(ws):
        return [np.full(np.shape(w), tau, np.float64) for w in ws]

    def run(ws, gs, accs, t):
        out = [step(w, g, a, t, **hyper) for w, g, a in zip(ws, gs, accs)]
        return [o[0] for o in out], [o[1] for o in out]

    return Reference(init, run, accumulators=lambda accs: accs)


def leafwise_state(step, init_leaf, *, accumulator=None, **hyper) -> Reference:
    """A `Reference` from ``step(w, g, leaf_state, t, **hyper) -> (w, leaf_state)``
    and ``init_leaf(w) -> leaf_state``; ``accumulator(leaf_state)`` picks the
    leaf's sum of squares, if it has one."""

    def run(ws, gs, states, t):
        out = [step(w, g, s, t, **hyper) for w, g, s in zip(ws, gs, states)]
        return [o[0] for o in out], [o[1] for o in out]

    accumulators = None if accumulator is None else (
        lambda states: [accumulator(s) for s in states])
    return Reference(lambda ws: [init_leaf(np.asarray(w)) for w in ws], run, accumulators)


def abs_sq(g):
    return np.real(g) ** 2 + np.imag(g) ** 2 if np.iscomplexobj(g) else g * g


def adagrad_step(w, g, acc, t, *, lr, eps=1e-8, eps_root=0.0, weight_decay=0.0):
    """One step of ARCHITECTURE.md, rule 1; lr may be a function of count = t - 1."""
    lr_t = lr(t - 1) if callable(lr) else lr
    g = g + weight_decay * w
    acc = acc + abs_sq(g)
    denom = np.sqrt(acc + eps_root) + eps
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(denom == 0, 0.0, -lr_t * g / np.where(denom == 0, 1.0, denom))
    return w + u, acc, u


def torch_step(w, g, acc, t, *, lr=0.01, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
               maximize=False):
    """torch.optim.Adagrad's documented algorithm (step t from 1)."""
    g = -g if maximize else g
    g = g + weight_decay * w
    clr = lr / (1 + (t - 1) * lr_decay)
    acc = acc + g * g
    u = -clr * g / (np.sqrt(acc) + eps)
    return w + u, acc, u


def keras3_step(w, g, acc, t, *, lr=0.001, epsilon=1e-7, weight_decay=None):
    """Keras 3 Adagrad: decoupled decay first, then lr * g / sqrt(acc + eps)."""
    lr_t = lr(t - 1) if callable(lr) else lr
    w_decayed = w - w * weight_decay * lr_t if weight_decay else w
    acc = acc + g * g
    w_new = w_decayed - lr_t * g / np.sqrt(acc + epsilon)
    return w_new, acc, w_new - w


def legacy_keras_step(w, g, acc, t, *, lr=0.001, epsilon=1e-7, decay=0.0):
    """tf.keras optimizer_v2 Adagrad: eps outside, lr / (1 + decay * iterations)."""
    lr_t = lr / (1 + decay * (t - 1))
    acc = acc + g * g
    u = -lr_t * g / (np.sqrt(acc) + epsilon)
    return w + u, acc, u


def tf1_step(w, g, acc, t, *, lr):
    """TF1 ApplyAdagrad: accum += g^2; var -= lr * g * rsqrt(accum)."""
    acc = acc + g * g
    u = -lr * g / np.sqrt(acc)
    return w + u, acc, u


def optax_step(w, g, acc, t, *, lr, eps=1e-7):
    """optax.adagrad: eps inside the root, update 0 where the sum is 0."""
    acc = acc + abs_sq(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(acc > 0, -lr * g / np.sqrt(acc + eps), 0.0)
    return w + u, acc, u


def run(step, w0, grads, acc0, **hyper):
    """Runs `step` over a list of gradients; returns (params, accumulators) lists."""
    w, acc = np.asarray(w0), np.asarray(acc0)
    ws, accs = [], []
    for t, g in enumerate(grads, start=1):
        w, acc, _ = step(w, np.asarray(g), acc, t, **hyper)
        ws.append(w)
        accs.append(acc)
    return ws, accs


# --- the regularized family ---------------------------------------------------

def _lr_at(lr, t):
    return lr(t - 1) if callable(lr) else lr


def proximal_adagrad_step(w, g, acc, t, *, lr, l1=0.0, l2=0.0, eps=1e-8, eps_root=0.0):
    """FOBOS with Adagrad steps (Duchi et al. 2011, section 5), as documented:
    a = lr / (sqrt(G + eps_root) + eps); v = w - a g; soft-threshold by a l1; / (1 + a l2)."""
    acc = acc + g * g
    denom = np.sqrt(acc + eps_root) + eps
    a = np.where(denom == 0, 0.0, _lr_at(lr, t) / np.where(denom == 0, 1.0, denom))
    v = w - a * g
    w_new = np.sign(v) * np.maximum(np.abs(v) - a * l1, 0.0) / (1.0 + a * l2)
    return w_new, acc, w_new - w


def tf1_proximal_adagrad_step(w, g, acc, t, *, lr, l1=0.0, l2=0.0):
    """TF's ApplyProximalAdagrad kernel: accum += g^2; lr_t = lr * rsqrt(accum);
    prox = var - g * lr_t; var = sign(prox) max(|prox| - lr_t l1, 0) / (1 + l2 lr_t)."""
    acc = acc + g * g
    lr_t = lr / np.sqrt(acc)
    prox = w - g * lr_t
    if l1 > 0:
        w_new = np.sign(prox) * np.maximum(np.abs(prox) - lr_t * l1, 0.0) / (1.0 + l2 * lr_t)
    else:
        w_new = prox / (1.0 + l2 * lr_t)
    return w_new, acc, w_new - w


def adagrad_da_init(w, *, tau, warm_start=True):
    """(z, G, centre) for one leaf: z_0 = 0, G_0 = tau, centre w_0 (or 0)."""
    return (np.zeros_like(w), np.full(w.shape, tau, np.float64),
            np.array(w, copy=True) if warm_start else np.zeros_like(w))


def adagrad_da_step(w, g, state, t, *, lr, l1=0.0, l2=0.0, eps=0.0):
    """Adagrad dual averaging as documented: the closed-form argmin of
    <z, w> + l1 t |w| + l2 t w^2 / 2 + h / (2 lr) (w - w_0)^2, h = sqrt(G) + eps."""
    z, acc, centre = state
    z, acc = z + g, acc + g * g
    lr_t = _lr_at(lr, t)
    h = np.sqrt(acc) + eps
    v = h * centre - lr_t * z
    w_new = np.sign(v) * np.maximum(np.abs(v) - lr_t * l1 * t, 0.0) / (h + lr_t * l2 * t)
    return w_new, (z, acc, centre)


def tf1_adagrad_da_step(w, g, state, t, *, lr, l1=0.0, l2=0.0):
    """TF's ApplyAdagradDA kernel with global_step = t: w_0 is ignored.
    var = -sign(z) lr max(|z| - l1 t, 0) / (l2 t lr + sqrt(G))."""
    z, acc, centre = state
    z, acc = z + g, acc + g * g
    if l1 > 0:
        w_new = np.sign(-z) * lr * np.maximum(np.abs(z) - l1 * t, 0.0) / (
            l2 * t * lr + np.sqrt(acc))
    else:
        w_new = -z * lr / (l2 * t * lr + np.sqrt(acc))
    return w_new, (z, acc, centre)


def ftrl_init(w, *, tau, lr, p=0.5, beta=0.0, warm_start=True):
    """(n, z) for one leaf: n_0 = tau; z_0 = -(tau^p + beta) / lr_0 * w_0 (warm start)."""
    lr0 = _lr_at(lr, 1)
    n = np.full(w.shape, tau, np.float64)
    z = -(tau ** p + beta) / lr0 * w if warm_start else np.zeros_like(w)
    return (n, z)


def ftrl_step(w, g, state, t, *, lr, p=0.5, l1=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0):
    """McMahan et al. 2013 algorithm 1 per coordinate, with Keras' generalisations
    in the paper's units: sigma = (n_new^p - n^p) / lr; z += g + s w - sigma w;
    w = 0 if |z| <= l1 else -(z - sign(z) l1) / ((n^p + beta) / lr + l2)."""
    n, z = state
    lr_t = _lr_at(lr, t)
    n_new = n + g * g
    sigma = (n_new ** p - n ** p) / lr_t
    z = z + g + l2_shrinkage * w - sigma * w
    q = (n_new ** p + beta) / lr_t + l2
    w_new = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / q)
    return w_new, (n_new, z)


def tf_ftrl_times_lr_step(w, g, state, t, *, lr, lr_power=-0.5, l1=0.0, l2=0.0,
                          l2_shrinkage=0.0, beta=0.0):
    """TensorFlow's ``ApplyFtrlV2MultiplyLinearByLr`` (tensorflow/core/kernels/
    training_ops.cc), line by line, in TF's units (its l2 and l2_shrinkage are
    half the paper's), with beta where TPU embeddings' FtrlParameters put it
    (tensorflow/core/tpu/kernels/sparse_core_ops_utils.cc,
    BuildFtrlOptimizerComputation): added to the quadratic term.

        linear += lr * (g + 2 s w) - (n_new^-lr_power - n^-lr_power) * w
        w = (clip(linear, -l1 lr, l1 lr) - linear) / (n_new^-lr_power + 2 l2 lr + beta)
    """
    accum, linear = state
    lr_t = _lr_at(lr, t)
    grad_to_use = g + 2 * l2_shrinkage * w
    new_accum = accum + g * g
    linear = linear + grad_to_use * lr_t - (new_accum ** -lr_power - accum ** -lr_power) * w
    quadratic = new_accum ** -lr_power + 2 * l2 * lr_t + beta
    l1_reg = l1 * lr_t
    w_new = (np.clip(linear, -l1_reg, l1_reg) - linear) / quadratic
    return w_new, (new_accum, linear)


def keras_ftrl_step(w, g, state, t, *, lr, lr_power=-0.5, l1=0.0, l2=0.0, l2_shrinkage=0.0,
                    beta=0.0):
    """keras.optimizers.Ftrl.update_step (Keras 3), line by line."""
    accum, linear = state
    l2_reg = l2 + beta / (2.0 * lr)
    grad_to_use = g + 2 * l2_shrinkage * w
    new_accum = accum + g * g
    linear = linear + grad_to_use - (new_accum ** -lr_power - accum ** -lr_power) / lr * w
    quadratic = new_accum ** -lr_power / lr + 2 * l2_reg
    w_new = (np.clip(linear, -l1, l1) - linear) / quadratic
    return w_new, (new_accum, linear)


# --- tables: FBGEMM's exact Adagrad ----------------------------------------------

def fbgemm_exact_adagrad_step(w, rows, g_rows, momentum1, *, lr, eps, row_wise):
    """One backward pass of FBGEMM's table-batched embeddings with EXACT_ADAGRAD
    (``row_wise=False``) or EXACT_ROWWISE_ADAGRAD (``row_wise=True``), on one table.

    FBGEMM's CPU backward (fbgemm_gpu/codegen/training/backward/
    embedding_backward_split_cpu_template.cpp) first sums the gradient of every
    occurrence of a row in the batch ("exact"), then updates each distinct row r
    once with that sum g_r (fbgemm_gpu/codegen/genscript/optimizers.py,
    ``adagrad()`` and ``rowwise_adagrad()``, ``split_weight_update_cpu``; the
    row-wise CPU kernel is src/RefImplementations.cc ``rowwise_sparse_adagrad_ref``)::

        per coordinate:  m_r += g_r^2;          w_r -= lr * g_r / (sqrt(m_r) + eps)
        row-wise:        m_r += mean_d(g_r^2);  w_r -= lr * g_r / (sqrt(m_r) + eps)

    momentum1 starts at 0 (shape (V, D), or (V,) row-wise); untouched rows keep
    theirs. ``rows`` are the distinct touched row ids, ``g_rows`` their summed
    gradients (one row each). Returns (w, momentum1, u) with u the change of w.
    """
    w, m = np.array(w, np.float64), np.array(momentum1, np.float64)
    sq = np.asarray(g_rows, np.float64) ** 2
    m[rows] += np.mean(sq, axis=1) if row_wise else sq
    denom = np.sqrt(m[rows])[:, None] if row_wise else np.sqrt(m[rows])
    u = np.zeros_like(w)
    u[rows] = -lr * np.asarray(g_rows, np.float64) / (denom + eps)
    return w + u, m, u


def _fbgemm_step(w, g, m, t, *, lr, eps, weight_decay, mode, max_norm, row_wise):
    """One step of FBGEMM's Adagrad with weight decay on rows that all update (a
    dense leaf, or a table's touched rows ``w[rows]``, ``g_rows``, ``m[rows]``); rows
    are leading-axis entries, a vector's rows are its numbers. Returns (w, m, u)."""
    lr_t = _lr_at(lr, t)
    w, g, m = (np.asarray(x, np.float64) for x in (w, g, m))
    g2 = g + weight_decay * w if mode == "l2" else g
    sq = g2 * g2
    axes = tuple(range(1, w.ndim))
    m = m + (np.mean(sq, axis=axes) if row_wise and axes else sq)
    denom = np.sqrt(m) + eps
    mult = np.where(denom == 0, 0.0, lr_t / np.where(denom == 0, 1.0, denom))
    if row_wise:
        mult = mult.reshape(mult.shape + (1,) * len(axes))
    corr = {"l2": 1 - mult * weight_decay, "decoupled": 1 - lr_t * weight_decay}.get(mode, 1.0)
    w_new = corr * w - mult * g
    if max_norm > 0:
        norm = np.sqrt(np.sum(w_new * w_new, axis=axes)) if axes else np.abs(w_new)
        scale = np.where(norm > max_norm, max_norm / np.where(norm > 0, norm, 1.0), 1.0)
        w_new = w_new * scale.reshape(scale.shape + (1,) * len(axes))
    return w_new, m, w_new - w


def fbgemm_rowwise_step(w, g, m, t, *, lr, eps=1e-8, weight_decay=0.0, mode="none",
                        max_norm=0.0):
    """FBGEMM's EXACT_ROWWISE_ADAGRAD with its weight-decay modes and max-norm, one step.

    fbgemm_gpu/codegen/genscript/optimizers.py, ``rowwise_adagrad()`` (v1.8.0):
    ``split_precomputation`` (and the CPU loop ``split_weight_update_cpu``) form
    g' = g + wd * w (weight_decay_mode 1, L2, with the old weight), m += mean_d(g'^2),
    multiplier = lr / (sqrt(m) + eps) and correction = 1 - multiplier * wd (mode 1),
    1 - lr * wd (mode 2, DECOUPLE), 1 otherwise; ``split_weight_update`` writes
    w = correction * w - multiplier * g with the raw g. ``split_post_update``, which
    fbgemm_gpu/codegen/training/optimizer/
    embedding_optimizer_split_device_kernel_template.cuh runs after the row is
    stored (CUDA only), rescales the row by max_norm / ||w|| where ||w|| > max_norm
    (max_norm > 0, no epsilon). fbgemm_gpu/codegen/training/backward/
    embedding_backward_split_cpu_template.cpp sums every occurrence of a row
    first and visits only the rows of the batch. Here ``mult = 0`` where
    sqrt(m) + eps == 0 (FBGEMM divides by zero). ``m`` holds one entry per row.
    """
    return _fbgemm_step(w, g, m, t, lr=lr, eps=eps, weight_decay=weight_decay, mode=mode,
                        max_norm=max_norm, row_wise=True)


def fbgemm_rowwise(**hyper) -> Reference:
    """`fbgemm_rowwise_step` with `hyper` bound, as a `Reference` over a tree's leaves
    (one accumulator entry per row of each leaf, started at 0)."""
    return leafwise_state(
        lambda w, g, m, t: fbgemm_rowwise_step(w, g, m, t, **hyper)[:2],
        lambda w: np.zeros(np.shape(w)[:1]),
        accumulator=lambda m: m,
    )


def fbgemm_exact_step(w, g, m, t, *, lr, eps=1e-8, weight_decay=0.0, mode="none"):
    """`fbgemm_rowwise_step` per coordinate, without max-norm: m += g'^2.

    With mode "none" this is FBGEMM's EXACT_ADAGRAD (optimizers.py, ``adagrad()``:
    m += g^2; w -= lr * g / (sqrt(m) + eps)). FBGEMM's EXACT_ADAGRAD takes no weight
    decay at all; modes "l2" and "decoupled" are the per-coordinate analogues of the
    row-wise ones that adagrad_jax.compat.fbgemm_exact_adagrad documents.
    """
    return _fbgemm_step(w, g, m, t, lr=lr, eps=eps, weight_decay=weight_decay, mode=mode,
                        max_norm=0.0, row_wise=False)


def sm3_init(w):
    """One zero vector per axis for rank >= 2; a full zero accumulator otherwise."""
    w = np.asarray(w)
    mu = [np.zeros(n) for n in w.shape] if w.ndim >= 2 else [np.zeros(w.shape)]
    return {"mu": mu, "m": np.zeros(w.shape)}


def sm3_step(w, g, state, t, *, lr, momentum=0.0, eps=1e-8):
    """SM3-II: nu = min over the covers (one per index of each axis) of mu, plus g^2;
    u = g / sqrt(nu + eps), 0 where nu == 0; each mu takes the max of nu over its
    set; with momentum beta, m = (1 - beta) u + beta m. Written coordinate by
    coordinate, as the paper's algorithm is."""
    g = np.asarray(g, np.float64)
    mu = [np.array(v) for v in state["mu"]]
    if g.ndim < 2:
        nu = mu[0] + g * g
        new_mu = [nu]
    else:
        nu = np.empty_like(g)
        new_mu = [np.zeros(n) for n in g.shape]
        for i in np.ndindex(*g.shape):
            nu[i] = min(mu[k][i[k]] for k in range(g.ndim)) + g[i] ** 2
        for i in np.ndindex(*g.shape):
            for k in range(g.ndim):
                new_mu[k][i[k]] = max(new_mu[k][i[k]], nu[i])
    u = np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu, 1.0) + eps), 0.0)
    m = (1 - momentum) * u + momentum * state["m"] if momentum else u
    return w - _lr_at(lr, t) * m, {"mu": new_mu, "m": m}


# --- Adagrad with momentum (TPU embeddings) -----------------------------------------

def adagrad_momentum_init(w, *, tau, m0=0.0):
    """(a, m) for one leaf: a_0 = tau, m_0 = m0."""
    return (np.full(np.shape(w), tau, np.float64), np.full(np.shape(w), m0, np.float64))


def adagrad_momentum_step(w, g, state, t, *, lr, momentum, beta2=1.0, exponent=2.0, eps=1e-10,
                          use_nesterov=False):
    """TensorFlow's BuildAdagradMomentumOptimizerComputation (sparse_core_ops_utils.cc),
    per coordinate, with the documented zero guard:
    a = a + g^2 (beta2 == 1) or beta2 a + (1 - beta2) g^2; s = g (a + eps)^(-1/exponent),
    0 where a + eps == 0; m = momentum m + s; w -= lr (momentum m + s if nesterov else m)."""
    a, m = state
    a = a + g * g if beta2 == 1 else beta2 * a + (1 - beta2) * g * g
    base = a + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(base > 0, g * np.where(base > 0, base, 1.0) ** (-1.0 / exponent), 0.0)
    m = momentum * m + s
    d = momentum * m + s if use_nesterov else m
    return w - _lr_at(lr, t) * d, (a, m)
