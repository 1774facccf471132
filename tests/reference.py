"""Independent NumPy float64 references, written straight from documented rules.

Nothing here imports adagrad_jax: each function transcribes one formula.
  * `adagrad_step`: DESIGN.md section 1 (the rule this package documents).
  * `torch_step`, `keras3_step`, `legacy_keras_step`, `tf1_step`,
    `optax_step`: each peer's documented update (DESIGN.md section 2).
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
    """One step of DESIGN.md section 1; lr may be a function of count = t - 1."""
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
