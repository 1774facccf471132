"""Independent NumPy float64 references for the optimizers beyond the diagonal.

Nothing here imports adagrad_jax: each function transcribes a paper's rule,
with the conventions the package documents (t counts steps from 1, eps
placements, refresh schedule, pseudo-inverse for zero eigenvalues).

  * `full_matrix_*`: Duchi, Hazan and Singer (JMLR 2011), Figure 2 (full
    matrices): G_t = sum g g^T, H_t = delta I + G_t^(1/2), x -= eta H_t^-1 g_t;
    applied per block of consecutive coordinates of the flattened leaf.
  * `shampoo_*`: Gupta, Koren and Singer (ICML 2018), Algorithm 2 (order-k
    tensors): H^i_t = H^i_{t-1} + G_(i) G_(i)^T, step G x_1 (H^1)^(-1/2k) ...
    x_k (H^k)^(-1/2k); per block of the blocked dimensions, with layer-wise
    grafting onto diagonal Adagrad (Agarwal et al. 2020).
  * `adagrad_norm_*`: Ward, Wu and Bottou (ICML 2019), AdaGrad-Norm:
    b_t^2 = b_{t-1}^2 + ||g_t||^2, x -= eta g_t / b_t.

States are plain dicts of float64 arrays; `*_init(ws, ...)` builds one from a
list of float64 parameter leaves, `*_step(ws, gs, state, t, ...)` returns the
new parameters and state.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _lr(lr, t):
    return lr(t - 1) if callable(lr) else lr


def matrix_function(sym, phi):
    """Q diag(phi(lambda)) Q^T; phi is 0 on eigenvalues <= lambda_max * b * eps64.

    The cutoff is NumPy's matrix_rank tolerance: those eigenvalues are 0 to
    float64 precision (the pseudo-inverse convention of the package).
    """
    lam, q = np.linalg.eigh(sym)
    b = sym.shape[0]
    cutoff = max(lam.max(initial=0.0) * b * np.finfo(np.float64).eps,
                 np.finfo(np.float64).tiny)
    keep = lam > cutoff
    values = np.zeros_like(lam)
    values[keep] = phi(lam[keep])
    return (q * values) @ q.T


# --- full-matrix Adagrad --------------------------------------------------------

def _ranges(n, b):
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def full_matrix_init(ws, *, block_size, tau=0.0):
    """G_0 = tau I per block of min(block_size, n) consecutive coordinates."""
    state = {"G": [], "P": []}
    for w in ws:
        n = w.size
        b = max(1, min(block_size, n))
        state["G"].append([tau * np.eye(e - s) for s, e in _ranges(n, b)])
        state["P"].append([np.zeros((e - s, e - s)) for s, e in _ranges(n, b)])
    return state


def full_matrix_step(ws, gs, state, t, *, lr, eps=1e-8, eps_root=0.0, every=1):
    """u = -lr (delta I + (G + eps_root I)^(1/2))^-1 g per block; P refreshed at t = 1 + j*every."""
    refresh = (t - 1) % every == 0
    new_ws, new_g, new_p = [], [], []
    for w, g, blocks_g, blocks_p in zip(ws, gs, state["G"], state["P"]):
        flat = g.reshape(-1)
        b = blocks_g[0].shape[0] if blocks_g else 1
        u = np.zeros_like(flat)
        out_g, out_p = [], []
        for (s, e), G, P in zip(_ranges(flat.size, b), blocks_g, blocks_p):
            x = flat[s:e]
            G = G + np.outer(x, x)
            if refresh:
                P = matrix_function(G, lambda lam: 1.0 / (np.sqrt(lam + eps_root) + eps))
            u[s:e] = P @ x
            out_g.append(G)
            out_p.append(P)
        new_ws.append(w - _lr(lr, t) * u.reshape(w.shape))
        new_g.append(out_g)
        new_p.append(out_p)
    return new_ws, {"G": new_g, "P": new_p}


# --- Shampoo --------------------------------------------------------------------

def _blocked_dims(shape, block_size):
    dims = [d for d in shape if d > 1]
    return dims, [_ranges(d, min(d, block_size)) for d in dims]


def shampoo_init(ws, *, block_size):
    """Per leaf: A (diagonal sum), and per block of the grid a list of H_i = 0."""
    state = {"A": [np.zeros_like(w) for w in ws], "H": [], "P": []}
    for w in ws:
        dims, ranges = _blocked_dims(w.shape, block_size)
        if len(dims) < 2:
            state["H"].append(None)
            state["P"].append(None)
            continue
        grid = list(itertools.product(*ranges))
        state["H"].append([[np.zeros((e - s, e - s)) for s, e in blk] for blk in grid])
        state["P"].append([[np.zeros((e - s, e - s)) for s, e in blk] for blk in grid])
    return state


def _unfold(x, i):
    """Mode-i unfolding: axis i first, the others flattened (Kolda and Bader)."""
    return np.moveaxis(x, i, 0).reshape(x.shape[i], -1)


def _mode_product(x, m, i):
    return np.moveaxis(np.tensordot(m, x, axes=([1], [i])), 0, i)


def shampoo_step(ws, gs, state, t, *, lr, block_size, eps=1e-12, every=10, start=10,
                 graft="adagrad"):
    """One Shampoo step with Adagrad statistics (beta2 = 1) for every leaf."""
    refresh = t >= start and (t - start) % every == 0
    new_ws, new_a, new_h, new_p = [], [], [], []
    for w, g, A, Hs, Ps in zip(ws, gs, state["A"], state["H"], state["P"]):
        A = A + g * g
        a = np.where(A + eps > 0, g / np.sqrt(np.where(A + eps > 0, A + eps, 1.0)), 0.0)
        dims, ranges = _blocked_dims(w.shape, block_size)
        if Hs is None:
            new_ws.append(w - _lr(lr, t) * a)
            new_a.append(A)
            new_h.append(None)
            new_p.append(None)
            continue
        k = len(dims)
        x = g.reshape(dims)
        d = np.zeros_like(x)
        out_h, out_p = [], []
        for blk, H, P in zip(itertools.product(*ranges), Hs, Ps):
            index = tuple(slice(s, e) for s, e in blk)
            xb = x[index]
            H = [h + _unfold(xb, i) @ _unfold(xb, i).T for i, h in enumerate(H)]
            if refresh:
                root = -1.0 / (2 * k)
                P = [matrix_function(h, lambda lam, r=root: (lam + eps) ** r) for h in H]
            y = xb
            for i, p in enumerate(P):
                y = _mode_product(y, p, i)
            d[index] = y
            out_h.append(H)
            out_p.append(P)
        d = d.reshape(w.shape)
        if graft is not None:
            target = np.linalg.norm(a) if graft == "adagrad" else np.linalg.norm(g)
            size = np.linalg.norm(d)
            d = d * (target / size) if size > 0 else np.zeros_like(d)
        u = d if t >= start else a
        new_ws.append(w - _lr(lr, t) * u)
        new_a.append(A)
        new_h.append(out_h)
        new_p.append(out_p)
    return new_ws, {"A": new_a, "H": new_h, "P": new_p}


# --- AdaGrad-Norm ---------------------------------------------------------------

def adagrad_norm_init(ws, *, tau=0.0, per_leaf=True):
    return {"b2": [float(tau)] * len(ws) if per_leaf else float(tau)}


def _sq_norm(g):
    return float(np.sum(np.real(g) ** 2 + np.imag(g) ** 2))


def adagrad_norm_step(ws, gs, state, t, *, lr, eps=1e-8, per_leaf=True):
    """b_t^2 = b_{t-1}^2 + ||g_t||^2 (per leaf or over all leaves); w -= lr g / (b_t + eps)."""
    def direction(g, b2):
        denom = math.sqrt(b2) + eps
        return np.zeros_like(g) if denom == 0 else g / denom

    if per_leaf:
        b2 = [b + _sq_norm(g) for b, g in zip(state["b2"], gs)]
        new_ws = [w - _lr(lr, t) * direction(g, b) for w, g, b in zip(ws, gs, b2)]
        return new_ws, {"b2": b2}
    b2 = state["b2"] + sum(_sq_norm(g) for g in gs)
    return [w - _lr(lr, t) * direction(g, b2) for w, g in zip(ws, gs)], {"b2": b2}


def run(init, step, ws, grads, **hyper):
    """Runs `step` over a list of gradient lists; returns (params, state)."""
    state = init(ws)
    for t, gs in enumerate(grads, start=1):
        ws, state = step(ws, gs, state, t, **hyper)
    return ws, state
