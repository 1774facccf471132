"""full_matrix_adagrad, shampoo and adagrad_norm on a simulated 8-device CPU mesh.

Statistics with a parameter's shape take its sharding; the others (matrix blocks,
scalars, counters) are replicated over its mesh: from `init` on arrays, on
`jax.ShapeDtypeStruct`s and under `jax.jit` with the mesh set. A sharded step gives the
numbers of a one-device step. The device count must be set before JAX starts, so the
check runs in a fresh interpreter.
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
    host = {"w": np.arange(64.0, dtype=np.float32).reshape(8, 8) / 64,
            "b": np.ones(8, np.float32)}
    params = jax.tree.map(jax.device_put, host, shardings)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    abstract = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                            params, shardings)

    def check_placement(state, where):
        for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
            name = jax.tree_util.keystr(path)
            like = [k for k in params if f"['{k}']" in name and x.shape == params[k].shape]
            if like:
                assert x.sharding.is_equivalent_to(shardings[like[0]], x.ndim), (where, name,
                                                                                x.sharding)
            else:
                assert isinstance(x.sharding, NamedSharding), (where, name, x.sharding)
                assert x.sharding.mesh == mesh and x.sharding.is_fully_replicated, (
                    where, name, x.sharding)

    txs = {
        "full_matrix_adagrad": adagrad_jax.full_matrix_adagrad(0.1, block_size=16),
        "shampoo": adagrad_jax.shampoo(0.1, block_size=4, preconditioner_every=1,
                                       start_preconditioning_step=1),
        "adagrad_norm": adagrad_jax.adagrad_norm(0.1),
        "adagrad_norm(per_leaf=False)": adagrad_jax.adagrad_norm(0.1, per_leaf=False),
    }
    for name, tx in txs.items():
        state = tx.init(params)
        check_placement(state, name + " init")
        check_placement(tx.init(abstract), name + " init(ShapeDtypeStruct)")
        with jax.set_mesh(mesh):
            check_placement(jax.jit(tx.init)(params), name + " jit(init)")

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        new_params, new_state = step(params, state, grads)
        one = jax.devices()[0]
        single_params = jax.device_put(host, one)
        single_grads = jax.device_put(jax.tree.map(np.asarray, grads), one)
        single, _ = jax.jit(lambda p, s, g: tx.update(g, s, p))(
            single_params, tx.init(single_params), single_grads)
        expected = optax.apply_updates(single_params, single)
        for k in params:
            np.testing.assert_allclose(new_params[k], expected[k], rtol=1e-5, atol=1e-6)
            assert new_params[k].sharding.is_equivalent_to(shardings[k], new_params[k].ndim)
    print("ok")
""")


def test_sharded_init_and_update_on_an_8_device_mesh():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
