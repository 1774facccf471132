"""Sharded parameters on a simulated 8-device CPU mesh (ARCHITECTURE.md, rule 6).

The device count must be set before JAX starts, so the check runs in a fresh
interpreter with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import adagrad_jax

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    shardings = {"w": NamedSharding(mesh, P("data", "model")),
                 "b": NamedSharding(mesh, P("model"))}
    params = {"w": jnp.arange(64.0).reshape(8, 8) / 64, "b": jnp.ones(8)}
    params = jax.tree.map(jax.device_put, params, shardings)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)

    for tx in (adagrad_jax.adagrad(0.1, weight_decay=0.01),
               adagrad_jax.sparse_adagrad(0.1)):
        state = tx.init(params)
        acc = [s for s in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, adagrad_jax.ScaleByAdagradState))
            if isinstance(s, adagrad_jax.ScaleByAdagradState)][0].sum_of_squares
        for name in params:  # init keeps each parameter's sharding
            assert acc[name].sharding == shardings[name], (name, acc[name].sharding)

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        new_params, new_state = step(params, state, grads)
        # Same numbers as on one device.
        host = jax.tree.map(np.asarray, (params, grads))
        single, _ = jax.jit(lambda p, s, g: tx.update(g, s, p))(
            *[jax.device_put(x, jax.devices()[0]) for x in (host[0], tx.init(host[0]), host[1])])
        expected = optax.apply_updates(host[0], single)
        for name in params:
            np.testing.assert_allclose(new_params[name], expected[name], rtol=1e-6)
            assert new_params[name].sharding.is_equivalent_to(shardings[name], 2 if name == "w" else 1)
    print("ok")
""")


def test_sharded_init_and_update_on_an_8_device_mesh():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
