"""Random problems and a jitted training loop, shared by the tests of the optimizers
beyond the diagonal (full-matrix Adagrad, Shampoo, AdaGrad-Norm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def random_problem(shapes, dtype=jnp.float32, steps=4, seed=0):
    """Parameters of the given shapes and `steps` gradient trees, all N(0, 1)
    (complex dtypes: N(0, 1) real and imaginary parts), drawn in that order."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype)

    params = {k: draw(s) for k, s in shapes.items()}
    return params, [{k: draw(s) for k, s in shapes.items()} for _ in range(steps)]


def train(tx, params, grads):
    """Params and state after one jitted `tx.update` and `optax.apply_updates` per gradient."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def close(a, b, rtol, atol=0.0):
    """Each leaf of the tree `a` equals the NumPy reference `b[k]` (float64 or
    complex128), compared in the reference's dtype."""
    for k in b:
        np.testing.assert_allclose(np.asarray(a[k]).astype(np.asarray(b[k]).dtype), b[k],
                                   rtol=rtol, atol=atol, err_msg=k)
