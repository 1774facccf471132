"""Adagrad in less memory (issue 19): state bytes, quality and step time, side by side.

Optimizers (float32 parameters throughout):

- ``adagrad``: `adagrad_jax.adagrad`, float32 accumulator (the baseline);
- ``adagrad, bfloat16 accumulator``: ``accumulator_dtype=jnp.bfloat16``, rounded to
  nearest (a sum of many small squares stalls);
- ``adagrad, bfloat16 accumulator, stochastic rounding``: the same with
  ``stochastic_rounding=True`` (the accumulator is rounded stochastically);
- ``adagrad, int8 accumulator``: ``accumulator_dtype="int8"`` (8-bit sums of rank >= 2
  leaves, a scale per block of 64; vectors keep float32);
- ``sm3``: `adagrad_jax.sm3` (momentum 0: one vector per axis);
- ``optax.adagrad``: optax's, for reference (its defaults: tau 0.1, eps 1e-7 inside).

For each: state bytes per parameter (the optimizer state's arrays over the
parameter count, on the digits MLP); the final loss of a least-squares problem
(256 features whose scales span 2 decades, one (1, 256) weight matrix,
full-batch steps) and
the test accuracy of the digits MLP of notebook 07 (64-64-10, minibatches of
128, 300 steps), each the best over the same learning-rate sweep; and the
step time of a 4096 x 4096 float32 layer (donated, median of round-robin
rounds) against adagrad's. Goals (issue 19): sm3's state for a 4096 x 4096
layer at most 2 x (4096 + 4096) floats; int8 within 2% of adagrad's final
loss and 0.5 points of its accuracy; sm3 within 1 point of adagrad's
accuracy; each step at most 1.3x adagrad's.

Run ``python benchmarks/memory.py [--quick | --tiny] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ""):  # run as a script: python benchmarks/memory.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import adagrad_jax
from benchmarks import _timing
from benchmarks import tables as tables_module

METHODS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "adagrad": lambda lr: adagrad_jax.adagrad(lr),
    "adagrad, bfloat16 accumulator": lambda lr: adagrad_jax.adagrad(
        lr, accumulator_dtype=jnp.bfloat16
    ),
    "adagrad, bfloat16 accumulator, stochastic rounding": lambda lr: adagrad_jax.adagrad(
        lr, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True
    ),
    "adagrad, int8 accumulator": lambda lr: adagrad_jax.adagrad(lr, accumulator_dtype="int8"),
    "sm3": lambda lr: adagrad_jax.sm3(lr),
    "optax.adagrad": lambda lr: optax.adagrad(lr),
}
FULL = {"rates": (0.03, 0.1, 0.3, 1.0), "ls_steps": 60, "mlp_steps": 300, "layer": 4096,
        "rounds": 15}
QUICK = {"rates": (0.1, 0.3, 1.0), "ls_steps": 60, "mlp_steps": 150, "layer": 2048,
         "rounds": 8}
TINY = {"rates": (0.1,), "ls_steps": 20, "mlp_steps": 10, "layer": 64, "rounds": 2}


def state_bytes_per_parameter(tx: optax.GradientTransformation, params: Any) -> float:
    state = tx.init(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    arrays = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) >= 1]
    return sum(x.size * x.dtype.itemsize for x in arrays) / n


def _train(tx: optax.GradientTransformation, params: Any, loss: Callable, batches: list) -> Any:
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for batch in batches:
        params, state = step(params, state, batch)
    return params


def least_squares(make: Callable, rates, steps: int, seed: int = 0) -> float:
    """The final loss of full-batch training (no sampling noise: the differences are
    the optimizers'), the best over `rates`."""
    rng = np.random.default_rng(seed)
    n, d = 2048, 256
    a = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-1, 1, d)
    b = a @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss(w, ai, bi):  # w is (1, d): a matrix, so that 8-bit codes apply to it
        return 0.5 * jnp.mean((ai @ w[0] - bi) ** 2)

    batches = [(a, b)] * steps
    return min(float(loss(_train(make(lr), jnp.zeros((1, d)), loss, batches), a, b))
               for lr in rates)


def digits_accuracy(make: Callable, rates, steps: int, seed: int = 0) -> float:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_train = int(0.8 * len(images))
    x_train, y_train = images[order[:n_train]], labels[order[:n_train]].astype(np.int32)
    x_test, y_test = images[order[n_train:]], labels[order[n_train:]].astype(np.int32)
    rng = np.random.default_rng(seed + 1)
    batches = [(x_train[i], y_train[i]) for i in (rng.choice(n_train, 128) for _ in range(steps))]
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (64, 64)) * np.sqrt(2 / 64), "b1": jnp.zeros(64),
              "w2": jax.random.normal(k2, (64, 10)) * np.sqrt(1 / 64), "b2": jnp.zeros(10)}

    def predict(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(predict(p, x), y).mean()

    best = 0.0
    for lr in rates:
        trained = _train(make(lr), params, loss, batches)
        accuracy = float(jnp.mean(jnp.argmax(predict(trained, x_test), -1) == y_test))
        best = max(best, accuracy)
    return 100 * best


def step_times(layer: int, rounds: int) -> dict[str, float]:
    grad = jnp.asarray(np.random.default_rng(0).standard_normal((layer, layer)), jnp.float32)
    steps = {}
    for name, make in METHODS.items():
        tx = make(0.01)
        box = [jnp.zeros((layer, layer)), None]
        box[1] = tx.init(box[0])

        def update(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        fn = jax.jit(update, donate_argnums=(0, 1))

        def step(i, box=box, fn=fn):
            box[0], box[1] = fn(box[0], box[1], grad)
            jax.block_until_ready(box[0])

        step(0)
        steps[name] = step
    times = _timing.round_robin_tiered(steps, {}, rounds=rounds, slow_every=1)
    return {m: _timing.stats_ms(t)["median_ms"] for m, t in times.items()}


def run(rates, ls_steps: int, mlp_steps: int, layer: int, rounds: int) -> list[dict[str, Any]]:
    mlp_params = {"w1": jnp.zeros((64, 64)), "b1": jnp.zeros(64), "w2": jnp.zeros((64, 10)),
                  "b2": jnp.zeros(10)}
    big = jnp.zeros((4096, 4096)) if layer >= 4096 else jnp.zeros((layer, layer))
    times = step_times(layer, rounds)
    rows = []
    for name, make in METHODS.items():
        print(f"  memory: {name} ...", flush=True)
        rows.append({
            "method": name,
            "bytes_per_parameter": state_bytes_per_parameter(make(0.1), mlp_params),
            "layer_state_floats": sum(
                x.size for x in jax.tree.leaves(make(0.1).init(big)) if getattr(x, "ndim", 0)),
            "least_squares_loss": least_squares(make, rates, ls_steps),
            "digits_accuracy": digits_accuracy(make, rates, mlp_steps),
            "step_ms": times[name],
            "step_vs_adagrad": times[name] / times["adagrad"],
        })
    base = rows[0]
    for r in rows:
        r["loss_vs_adagrad"] = r["least_squares_loss"] / base["least_squares_loss"]
        r["accuracy_minus_adagrad"] = r["digits_accuracy"] - base["digits_accuracy"]
    return rows


def table(rows: list[dict[str, Any]], layer: int) -> str:
    lines = [f"| optimizer | state bytes / parameter (MLP) | state numbers, {layer} x {layer}"
             " layer | least squares: final loss (vs adagrad) | digits: test accuracy % (vs"
             f" adagrad) | step ms, {layer} x {layer} (vs adagrad) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['bytes_per_parameter']:.2f} | {r['layer_state_floats']:,} |"
            f" {r['least_squares_loss']:.5g} ({r['loss_vs_adagrad']:.3f}x) |"
            f" {r['digits_accuracy']:.1f} ({r['accuracy_minus_adagrad']:+.1f}) |"
            f" {r['step_ms']:.2f} ({r['step_vs_adagrad']:.2f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--tiny", action="store_true", help="toy sizes, for the smoke test")
    parser.add_argument("--markdown", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    before = tables_module.machine()
    print(before, flush=True)
    rows = run(**config)
    text = "\n".join([f"Start: {before}", f"End: {tables_module.machine()}", "",
                      table(rows, config["layer"]),
                      "", f"Learning rates swept: {config['rates']} (the best of each)."])
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
