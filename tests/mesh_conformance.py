"""Conformance on an 8-device mesh, for every spec: run as ``python -m tests.mesh_conformance``.

JAX fixes the device count when it starts, so `tests/test_conformance.py` runs
this module in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and reads the JSON
report it prints last: ``{spec name: {mesh kind: "ok" or the first failure}}``.

For each spec and each kind of mesh axes (Explicit, the default of
`jax.make_mesh`, and Auto), on a 4 x 2 ("data", "model") mesh:

* `adagrad_jax.state_shardings` gives the shardings of the state;
* eager ``init`` and ``jax.jit(tx.init, out_shardings=helper)`` give them
  (scalars created eagerly may stay uncommitted: JAX moves those freely);
* on Explicit meshes, plain ``jax.jit(tx.init)`` gives them too (specs with
  ``jit_init_follows_params``), with the same types as the eager state;
* a jitted ``update`` keeps every state leaf's type and sharding (on Auto
  axes, where XLA places jit outputs, the sharding of leaves placed like a
  parameter; replicated statistics may come back sharded);
* a `lax.scan` over steps compiles and runs (its carry types must not change).
"""

from __future__ import annotations

import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adagrad_jax
from tests import specs as specs_lib


def _params(mesh):
    rng = np.random.default_rng(0)
    shardings = {"w": P("data", None), "v": P(None, "model"), "b": P()}
    shapes = {"w": (8, 4), "v": (4, 6), "b": (6,)}
    return {name: jax.device_put(jnp.asarray(rng.normal(size=shapes[name]), jnp.float32),
                                 NamedSharding(mesh, shardings[name])) for name in shapes}


def _same_placement(what, state, expected, allow_uncommitted, sharded_only=False):
    for path, (x, s) in zip(
            [p for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]],
            zip(jax.tree.leaves(state), jax.tree.leaves(expected))):
        if x.sharding.is_equivalent_to(s, x.ndim):
            continue
        if sharded_only and s.is_fully_replicated:
            continue
        if allow_uncommitted and x.ndim == 0 and not x.committed:
            continue
        raise AssertionError(
            f"{what}: state{jax.tree_util.keystr(path)} is {x.sharding}, expected {s.spec}")


def _check(spec, kind):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
    params = _params(mesh)
    tx = spec.build()
    expected = adagrad_jax.state_shardings(tx, params)
    assert jax.tree.structure(expected) == jax.tree.structure(jax.eval_shape(tx.init, params))
    eager = tx.init(params)
    _same_placement("eager init", eager, expected, allow_uncommitted=True)
    placed = jax.jit(tx.init, out_shardings=expected)(params)
    _same_placement("jit(init, out_shardings)", placed, expected, allow_uncommitted=False)
    if kind == AxisType.Explicit and spec.jit_init_follows_params:
        jitted = jax.jit(tx.init)(params)
        _same_placement("jit(init)", jitted, expected, allow_uncommitted=False)
        for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(placed)):
            assert jax.typeof(a) == jax.typeof(b), ("jit(init) type", jax.typeof(a), jax.typeof(b))

    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)

    def step(carry, g):
        p, s = carry
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    (_, new_state), _ = jax.jit(step)((params, placed), grads)
    # On Auto axes the partitioner places jit outputs: leaves placed like a
    # parameter must stay so; replicated statistics may come back sharded.
    _same_placement("after update", new_state, expected, allow_uncommitted=False,
                    sharded_only=kind == AxisType.Auto)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(placed)):
        assert jax.typeof(a) == jax.typeof(b), ("update changed a type", jax.typeof(b),
                                                jax.typeof(a))
    stacked = jax.tree.map(lambda g: jnp.stack([g, g * 0.5, g * 0.25]), grads)
    (scanned, _), _ = jax.jit(lambda c, gs: jax.lax.scan(step, c, gs))((params, placed), stacked)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(scanned))


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    report = {}
    for spec in specs_lib.SPECS:
        report[spec.name] = {}
        for kind in (AxisType.Explicit, AxisType.Auto):
            try:
                _check(spec, kind)
                result = "ok"
            except Exception as e:  # noqa: BLE001 - reported per spec, asserted by the test
                result = f"{type(e).__name__}: {e}"[:1500]
                traceback.print_exc(file=sys.stderr)
            report[spec.name][kind.name] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
