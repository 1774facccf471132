"""Writes tests/data/v02_checkpoint: ftrl and adagrad_dual-averaging states in 0.2's layout.

Run once, with adagrad_jax 0.2 (commit 26d9691, the last with 0.2's state
layout), from the repository root::

    python tests/data/make_v02_checkpoint.py

In 0.2, `FtrlState` held ``sum_of_squares`` and ``linear`` and
`AdagradDAState` ``gradient_sum`` and ``sum_of_squares``, each a separate tree
like the parameters. tests/test_state_access.py restores this checkpoint
without a target, migrates it with `adagrad_jax.restore_structure` and checks
that training goes on exactly as if it had never stopped. The steps and
hyperparameters below are the test's (`V02_STEPS`, `v02_optimizers`); keep
them in step.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import adagrad_jax

STEPS = 3
HERE = os.path.dirname(os.path.abspath(__file__))


def params():
    return {
        "emb": jnp.asarray(np.linspace(-1.0, 1.0, 18, dtype=np.float32).reshape(6, 3)),
        "b": jnp.asarray(np.array([0.5, -0.25, 0.125]), jnp.bfloat16),
    }


def optimizers(**options):
    """The two optimizers (`options`: arguments added later, for the test; none in 0.2)."""
    return {
        "ftrl": adagrad_jax.ftrl(0.2, l1=0.01, l2=0.02, beta=0.1, **options),
        "adagrad_da": adagrad_jax.adagrad_da(0.2, l1=0.01, **options),
    }


def grads(step):
    """Step `step`'s gradients: a RowSparse for the table (a duplicate id), dense for b."""
    rng = np.random.default_rng(step)
    ids = np.array([step % 6, 4, 4, (step + 2) % 6], np.int32)
    rows = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    return {"emb": adagrad_jax.RowSparse(ids, rows), "b": jnp.asarray(b, jnp.bfloat16)}


def train(tx, p, state, steps):
    for step in steps:
        updates, state = tx.update(grads(step), state, p)
        p = adagrad_jax.apply_updates(p, updates)
    return p, state


def main():
    saved = {}
    for name, tx in optimizers().items():
        p = params()
        p, state = train(tx, p, tx.init(p), range(STEPS))
        saved[name] = {"params": p, "opt_state": state}
    path = os.path.join(HERE, "v02_checkpoint")
    shutil.rmtree(path, ignore_errors=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, saved)
    checkpointer.wait_until_finished()
    print(jax.tree.map(lambda x: (x.shape, str(x.dtype)), saved))


if __name__ == "__main__":
    main()
