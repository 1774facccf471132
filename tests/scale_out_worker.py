"""Training a row-sharded model in a fresh interpreter, for tests/test_scale_out.py.

``python -m tests.scale_out_worker MODE OUT [ARGS]`` with JAX's device count
already set through XLA_FLAGS; MODE is

* ``single``: train on 8 devices (Explicit mesh) and on 1 device; save both,
  and the error of an ``out_of_range="error"`` step on 8 devices;
* ``process PID PORT``: one of 2 processes with 4 CPU devices each
  (``jax.distributed`` on 127.0.0.1:PORT, gloo collectives); process 0 saves
  the trained arrays, gathered to the host; each process saves the error
  its ``out_of_range="error"`` step raised;
* ``checkpoint``: train 2 steps on 8 devices, save with orbax, restore onto
  the same mesh and onto 4 devices, train 2 more steps; save all three runs.

The model: a row-sharded user table (64 x 4), a replicated small table
(10 x 4) and a dense tower ``w`` (4,), trained by `sparse_adagrad` with
`value_and_row_grad`; every step's batch has ids repeated across devices.
"""

from __future__ import annotations

import sys

import numpy as np

ROWS, SMALL, DIM, IDS_PER_DEVICE, STEPS = 64, 10, 4, 6, 4


def batches(num_steps=STEPS, devices=8):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(num_steps):
        big = rng.integers(0, ROWS, (devices * IDS_PER_DEVICE,)).astype(np.int32)
        big[IDS_PER_DEVICE] = big[0]  # the same id on two devices
        small = rng.integers(0, SMALL, (devices * 2,)).astype(np.int32)
        y = rng.normal(size=(devices * IDS_PER_DEVICE,)).astype(np.float32)
        out.append((big, small, y))
    return out


def initial_params():
    rng = np.random.default_rng(3)
    return {"big": rng.normal(size=(ROWS, DIM)).astype(np.float32),
            "small": rng.normal(size=(SMALL, DIM)).astype(np.float32),
            "w": rng.normal(size=(DIM,)).astype(np.float32)}


def make_step(tx):
    import jax
    import jax.numpy as jnp

    import adagrad_jax

    def loss(rows, y):
        small = jnp.mean(rows["small"], axis=0)
        pred = (rows["big"] + small) @ rows["w"]
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(params, state, big, small, y):
        value, grads = adagrad_jax.value_and_row_grad(loss)(
            params, {"big": big, "small": small, "w": None}, y)
        updates, state = tx.update(grads, state, params)
        return adagrad_jax.apply_updates(params, updates), state, value

    return step


def optimizer():
    """unique_rows=40: the big table's 48 ids per step (at most 35 distinct) are
    compacted into 40 rows across the devices; the small table's 16 ids are not."""
    import adagrad_jax
    return adagrad_jax.sparse_adagrad(0.1, initial_accumulator_value=0.1, unique_rows=40)


def placement(mesh):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    return {"big": NamedSharding(mesh, P("data", None)), "small": NamedSharding(mesh, P()),
            "w": NamedSharding(mesh, P())}


def put(host, sharding):
    """A global array from host data; each process supplies only its own shards."""
    import jax
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def train(mesh, params=None, state=None, data=None):
    """Trains from `initial_params` (or the given arrays); returns params, state."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adagrad_jax

    tx = optimizer()
    if params is None:
        params = jax.tree.map(put, initial_params(), placement(mesh))
    if state is None:
        state = jax.jit(tx.init, out_shardings=adagrad_jax.state_shardings(tx, params))(params)
    step = make_step(tx)
    ids = NamedSharding(mesh, P("data"))
    for big, small, y in batches() if data is None else data:
        params, state, _ = step(params, state, put(big, ids), put(small, ids), put(y, ids))
    return params, state


def out_of_range_error(mesh):
    """Runs a step of `out_of_range="error"` training whose last id (on the last
    device) is past the table; returns the last line of the error it raised
    ("no error" if none), after checking that a good step still runs after it."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adagrad_jax

    tx = adagrad_jax.sparse_adagrad(0.1, initial_accumulator_value=0.1, out_of_range="error")
    params = jax.tree.map(put, initial_params(), placement(mesh))
    state = jax.jit(tx.init, out_shardings=adagrad_jax.state_shardings(tx, params))(params)
    step = make_step(tx)
    ids = NamedSharding(mesh, P("data"))
    big, small, y = batches(1, devices=mesh.size)[0]
    bad = big.copy()
    bad[-1] = ROWS + 5
    try:
        jax.block_until_ready(step(params, state, put(bad, ids), put(small, ids), put(y, ids)))
        message = "no error"
    except jax.errors.JaxRuntimeError as e:
        message = str(e).strip().splitlines()[-1]
    jax.block_until_ready(step(params, state, put(big, ids), put(small, ids), put(y, ids)))
    return message


def to_host(params, state):
    import jax
    from jax.experimental import multihost_utils
    acc = state[1].sum_of_squares
    arrays = {"big": params["big"], "small": params["small"], "w": params["w"],
              "acc_big": acc["big"], "acc_w": acc["w"]}
    if jax.process_count() > 1:
        arrays = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in arrays.items()}
    return {k: np.asarray(v) for k, v in arrays.items()}


def main(argv):
    mode, out = argv[0], argv[1]
    import jax
    if mode == "process":
        pid, port = int(argv[2]), int(argv[3])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=pid, initialization_timeout=30)
        assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
        mesh = jax.make_mesh((8,), ("data",))
        result = to_host(*train(mesh))
        error = out_of_range_error(mesh)
        # The table and its accumulator stayed row-sharded: this process holds half.
        if pid == 0:
            np.savez(out, **result)
        np.save(f"{out}.error{pid}.npy", np.array(error))
        jax.distributed.shutdown()
        return
    assert jax.device_count() == 8, jax.devices()
    if mode == "single":
        eight = to_host(*train(jax.make_mesh((8,), ("data",))))
        one = to_host(*train(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])))
        error = out_of_range_error(jax.make_mesh((8,), ("data",)))
        np.savez(out, **{f"8/{k}": v for k, v in eight.items()},
                 **{f"1/{k}": v for k, v in one.items()}, error=np.array(error))
    elif mode == "checkpoint":
        checkpoint(out, argv[2])


def checkpoint(out, directory):
    import jax
    import orbax.checkpoint as ocp

    import adagrad_jax

    data = batches()
    mesh8 = jax.make_mesh((8,), ("data",))
    mesh4 = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    full = to_host(*train(mesh8, data=data))
    params, state = train(mesh8, data=data[:2])
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(f"{directory}/step2", {"params": params, "state": state})
        checkpointer.wait_until_finished()
    results = {"full": full}
    tx = optimizer()
    for name, mesh in (("same", mesh8), ("four", mesh4)):
        shardings = placement(mesh)
        abstract_params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, shardings)
        abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            jax.eval_shape(tx.init, abstract_params),
            adagrad_jax.state_shardings(tx, abstract_params))
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                f"{directory}/step2", {"params": abstract_params, "state": abstract_state})
        table = restored["params"]["big"]
        assert table.sharding.is_equivalent_to(shardings["big"], 2), table.sharding
        assert len(table.addressable_shards) == mesh.size
        assert table.addressable_shards[0].data.shape == (table.shape[0] // mesh.size, DIM)
        results[name] = to_host(*train(mesh, restored["params"], restored["state"], data[2:]))
    np.savez(out, **{f"{run}/{k}": v for run, arrays in results.items()
                     for k, v in arrays.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
