"""Tables larger than one device: row-sharded training on simulated CPU meshes (issue 9).

JAX fixes its device count when it starts, so each check runs in a fresh
interpreter with XLA_FLAGS set (8 devices; 2 processes x 4 devices for the
multi-process test). Sources: single-device training of the same model with
the same batches (equal to float32 rounding: the mean over the batch and the
sums of duplicate ids are reduced in another order across devices), and the
compiled HLO and memory analysis of the sharded step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("big", "small", "w", "acc_big", "acc_w")


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def _python(args, devices=8, timeout=300):
    result = subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, pytest
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import adagrad_jax
    from devtools.hlo import collectives
    from tests import specs

    assert jax.device_count() == 8
    RS = adagrad_jax.RowSparse
    rng = np.random.default_rng(0)
    TABLE = rng.normal(size=(64, 3)).astype(np.float32)
    W = rng.normal(size=(3,)).astype(np.float32)
    STEPS = []
    for _ in range(3):
        ids = rng.integers(0, 64, 32).astype(np.int32)
        ids[4] = ids[0]          # one id on two devices
        ids[9], ids[17] = -1, 1000   # padding, out of range (dropped)
        STEPS.append((ids, rng.normal(size=(32, 3)).astype(np.float32),
                      rng.normal(size=(3,)).astype(np.float32)))

    def train(tx, params, put_ids):
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: (lambda u, s: (adagrad_jax.apply_updates(p, u), s))(
            *tx.update(g, s, p)))
        for ids, values, gw in STEPS:
            grads = {"t": RS(put_ids(ids), put_ids(values)), "w": put_ids(gw, True)}
            params, state = step(params, state, grads)
        return params, state

    # Rules that act on each row alone (SM3's column vectors are shared by every row of
    # the stacked array; an 8-bit code's rounding is keyed by the row's id, which
    # stacking changes).
    cases = [(s.name, s.build) for s in specs.SPECS if s.row_sparse
             and (s.coordinatewise or s.shares_row_state) and not s.quantized_state]
    cases.append(("sparse_adagrad-row_wise",
                  lambda: adagrad_jax.sparse_adagrad(0.1, row_wise=True)))
    for kind in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        row = NamedSharding(mesh, P("data", None))
        params = {"t": jax.device_put(TABLE, row), "w": jax.device_put(W, NamedSharding(mesh, P()))}
        def put(x, replicated=False):
            spec = P() if replicated else P("data", *([None] * (x.ndim - 1)))
            return jax.device_put(x, NamedSharding(mesh, spec))
        for name, build in cases:
            # Auto axes: one spec per state layout (the placement code is shared).
            if kind == AxisType.Auto and name not in (
                    "sparse_adagrad-dense-leaves", "ftrl", "ftrl-stacked_slots",
                    "sparse_adagrad-row_wise"):
                continue
            sharded, state = train(build(), params, put)
            single, single_state = train(build(), {"t": TABLE, "w": W}, lambda x, r=False: jnp.asarray(x))
            for a, b in zip(jax.tree.leaves((sharded, state)), jax.tree.leaves((single, single_state))):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=f"{kind} {name}")
            assert sharded["t"].sharding.is_equivalent_to(row, 2), (kind, name, sharded["t"].sharding)
            for leaf in jax.tree.leaves(state):
                if leaf.ndim >= 1 and leaf.shape[0] == 64:   # the table's state: rows stay put
                    assert tuple(leaf.sharding.spec)[:1] == ("data",), (kind, name, leaf.sharding)

        # Structure: a 65536 x 8 table, 64 ids per device. No collective, no
        # temporary is table-sized; collective bytes do not change with the rows.
        def compiled(rows):
            tx = adagrad_jax.sparse_adagrad(0.1)
            p = {"t": jax.ShapeDtypeStruct((rows, 8), jnp.float32, sharding=NamedSharding(mesh, P("data", None))),
                 "w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P()))}
            s = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                             jax.eval_shape(tx.init, p), adagrad_jax.state_shardings(tx, p))
            ids = jax.ShapeDtypeStruct((512,), jnp.int32, sharding=NamedSharding(mesh, P("data")))
            def step(p, s, ids):
                v, g = adagrad_jax.value_and_row_grad(lambda r: jnp.sum(r["t"] @ r["w"]))(
                    p, {"t": ids, "w": None})
                u, s = tx.update(g, s, p)
                return adagrad_jax.apply_updates(p, u), s, v
            return jax.jit(step, donate_argnums=(0, 1)).lower(p, s, ids).compile()
        small, large = compiled(65536), compiled(131072)
        table_bytes = 65536 * 8 * 4
        found = collectives(small.as_text())
        assert found and max(b for _, b in found) <= 4 * 512 * 8 * 4 <= table_bytes // 32, (kind, found)
        assert [b for _, b in found] == [b for _, b in collectives(large.as_text())], kind
        memory = small.memory_analysis()
        assert memory.temp_size_in_bytes == large.memory_analysis().temp_size_in_bytes, kind
        assert memory.temp_size_in_bytes <= 8 * 512 * 8 * 4, (kind, memory.temp_size_in_bytes)
        assert memory.argument_size_in_bytes < 2 * table_bytes // 8 * 1.1, (kind, memory)
        assert memory.alias_size_in_bytes >= 2 * table_bytes // 8, (kind, memory)

    # --- bad input, on an Explicit mesh -------------------------------------
    mesh = jax.make_mesh((8,), ("data",))
    row = NamedSharding(mesh, P("data", None))
    params = {"t": jax.device_put(TABLE, row), "w": jax.device_put(W, NamedSharding(mesh, P()))}
    look = adagrad_jax.value_and_row_grad(lambda r: jnp.sum(r["t"]))
    with pytest.raises(TypeError, match=r"ids\\['t'\\].*ids must be integers"):
        jax.jit(look)(params, {"t": jnp.zeros((8,), jnp.float32), "w": None})
    with pytest.raises(ValueError, match="indices must be 1-D"):
        RS(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"params\\['big'\\] has 60 rows.*divide evenly.*64 rows"):
        adagrad_jax.propose_placement({"big": jax.ShapeDtypeStruct((60, 1 << 16), jnp.float32)}, mesh)
    with pytest.raises(ValueError, match="mesh axis 'dta'.*Did you mean 'data'"):
        adagrad_jax.propose_placement(params, mesh, axis="dta")
    with pytest.raises(ValueError, match="overrides names .*Did you mean"):
        adagrad_jax.propose_placement(params, mesh, overrides={"['tt']": P()})
    tx = adagrad_jax.sparse_adagrad(0.1)
    state = tx.init(params)
    wrong = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), state)
    grads = {"t": RS(jax.device_put(jnp.arange(8, dtype=jnp.int32), NamedSharding(mesh, P("data"))),
                     jax.device_put(jnp.ones((8, 3)), row)), "w": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"state.sum_of_squares\\['t'\\] is sharded .* params\\['t'\\] is sharded"):
        jax.jit(tx.update)(grads, wrong, params)
    try:  # Uneven rows: refused at trace time if JAX lets such a table exist at all.
        uneven = jax.device_put(jnp.zeros((60, 3)), row)
    except ValueError:
        uneven = None
    if uneven is not None:
        p = {"t": uneven, "w": params["w"]}
        with pytest.raises(ValueError, match="60 rows.*divide evenly"):
            jax.jit(tx.update)(grads, tx.init(p), p)
    # Placement: big tables row-sharded, small ones and the tower replicated; overrides win.
    shapes = {"user": jax.ShapeDtypeStruct((1 << 16, 16), jnp.float32),
              "country": jax.ShapeDtypeStruct((200, 16), jnp.float32),
              "w": jax.ShapeDtypeStruct((16,), jnp.float32)}
    proposed = adagrad_jax.propose_placement(shapes, mesh)
    assert {k: v.spec for k, v in proposed.items()} == {
        "user": P("data", None), "country": P(), "w": P()}, proposed
    assert adagrad_jax.propose_placement(shapes, mesh, overrides={"['user']": P()})["user"].spec == P()
    print("ok")
""")


def test_row_sparse_specs_on_explicit_and_auto_meshes_structure_and_bad_input():
    """Every row-sparse spec trains a row-sharded table on 8 devices (Explicit axes;
    one spec per state layout on Auto axes too) to the single-device result; the
    compiled step moves only ids and their rows; bad input fails clearly."""
    assert _python(["-c", SCRIPT]).strip().endswith("ok")


TABLE_WISE_SCRIPT = textwrap.dedent(r"""
    import jax, jax.numpy as jnp, numpy as np, pytest
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import adagrad_jax
    from adagrad_jax.sharding import TableWise, stack_tables
    from devtools.hlo import collectives
    from tests import specs

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    D, B = 3, 16                      # row width; examples per step (2 per device)
    ROWS = {"shop": 13, "brand": 7, "cat": 5, "city": 11, "lang": 2}
    TABLES = {k: rng.normal(size=(r, D)).astype(np.float32) for k, r in ROWS.items()}
    W = rng.normal(size=(D,)).astype(np.float32)
    FEATURES = {"shop": 2, "brand": 1, "cat": 3, "city": 1, "lang": 1}
    STEPS = []
    for _ in range(3):
        ids = {k: rng.integers(0, ROWS[k], (B, f)).astype(np.int32) for k, f in FEATURES.items()}
        ids["shop"][1, 0] = ids["shop"][0, 0]    # one id on two devices (examples 0 and 1 share a device)
        ids["shop"][5, 1] = ids["shop"][0, 0]    # ... and on another device
        ids["cat"][3, 0], ids["cat"][7, 1] = -1, ROWS["cat"]   # padding; one past the table's end
        ids["brand"][9, 0] = 1000                               # far out of range
        STEPS.append((ids, rng.normal(size=(B,)).astype(np.float32)))

    def loss(rows, y):   # rows: {table: (B, f, D)}, "w": (D,)
        x = sum(jnp.sum(rows[k], axis=1) for k in ROWS)
        return jnp.mean((x @ rows["w"] - y) ** 2)

    def train_single(tx):
        params = {**{k: jnp.asarray(v) for k, v in TABLES.items()}, "w": jnp.asarray(W)}
        state = tx.init(params)
        @jax.jit
        def step(params, state, ids, y):
            _, g = adagrad_jax.value_and_row_grad(loss)(params, {**ids, "w": None}, y)
            u, state = tx.update(g, state, params)
            return adagrad_jax.apply_updates(params, u), state
        for ids, y in STEPS:
            params, state = step(params, state, ids, y)
        return params, state

    def train_stacked(tx, mesh):
        stacked, layout = stack_tables(TABLES, mesh, "data")
        params = {"tables": stacked, "w": jax.device_put(W, NamedSharding(mesh, P()))}
        state = jax.jit(tx.init, out_shardings=adagrad_jax.state_shardings(tx, params))(params)
        @jax.jit
        def step(params, state, ids, y):
            def stacked_loss(rows, y):
                return loss({**layout.split_rows(rows["tables"], ids), "w": rows["w"]}, y)
            _, g = adagrad_jax.value_and_row_grad(stacked_loss)(
                params, {"tables": layout.concat_ids(ids), "w": None}, y)
            u, state = tx.update(g, state, params)
            return adagrad_jax.apply_updates(params, u), state
        batch = NamedSharding(mesh, P("data"))
        for ids, y in STEPS:
            ids = {k: jax.device_put(v, NamedSharding(mesh, P("data", None))) for k, v in ids.items()}
            params, state = step(params, state, ids, jax.device_put(y, batch))
        return params, state, layout

    # --- layout: whole tables per device, each device's block holds exactly them ---
    mesh = jax.make_mesh((8,), ("data",))
    stacked, layout = stack_tables(TABLES, mesh, "data")
    assert layout.block_rows == 13 and layout.num_rows == 8 * 13, layout
    for name, rows, block, offset in layout.tables:
        assert offset // 13 == block == (offset + rows - 1) // 13, layout
        shard = [s for s in stacked.addressable_shards if s.index[0].start == block * 13][0]
        np.testing.assert_array_equal(np.asarray(shard.data)[offset - block * 13:][:rows], TABLES[name])
    assert len({b for _, _, b, _ in layout.tables}) == len(ROWS)   # 5 tables on 5 of 8 devices
    for name, table in layout.unstack(stacked).items():
        np.testing.assert_array_equal(table, TABLES[name])

    # --- training: equal to unstacked single-device training --------------------
    # Rules that act on each row alone (SM3's column vectors are shared by every row of
    # the stacked array; an 8-bit code's rounding is keyed by the row's id, which
    # stacking changes).
    cases = [(s.name, s.build) for s in specs.SPECS if s.row_sparse
             and (s.coordinatewise or s.shares_row_state) and not s.quantized_state]
    cases.append(("sparse_adagrad-row_wise", lambda: adagrad_jax.sparse_adagrad(0.1, row_wise=True)))
    SINGLE = {}
    for kind in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        for name, build in cases:
            if kind == AxisType.Auto and name not in ("ftrl", "sparse_adagrad-row_wise"):
                continue
            params, state, layout = train_stacked(build(), mesh)
            if name not in SINGLE:
                SINGLE[name] = train_single(build())
            single, single_state = SINGLE[name]
            assert params["tables"].sharding.is_equivalent_to(layout.sharding(), 2), (kind, name)
            got = {**layout.unstack(params["tables"]), "w": params["w"]}
            for k in single:
                np.testing.assert_allclose(got[k], single[k], rtol=2e-5, atol=1e-6, err_msg=f"{kind} {name} {k}")
            n_state = 0
            flat, flat_single = jax.tree.leaves(state), jax.tree.leaves(single_state)
            # Per-table state leaves come out of unstack in the single run's (sorted) leaf order.
            it = iter(flat_single)
            for leaf in flat:
                if leaf.ndim >= 1 and leaf.shape[0] == layout.num_rows:
                    assert tuple(leaf.sharding.spec)[:1] == ("data",), (kind, name, leaf.sharding)
                    parts = layout.unstack(leaf)
                    for k in sorted(ROWS):
                        np.testing.assert_allclose(parts[k], next(it), rtol=2e-5, atol=1e-6, err_msg=f"{kind} {name} state {k}")
                    n_state += 1
                else:
                    np.testing.assert_allclose(leaf, next(it), rtol=2e-5, atol=1e-6, err_msg=f"{kind} {name}")
            assert n_state >= 1 and next(it, None) is None, name

    # --- ids outside a table's range never touch another table's rows -------------
    mesh = jax.make_mesh((8,), ("data",))
    stacked, layout = stack_tables(TABLES, mesh, "data", block_rows=20)  # several tables per block
    assert len({b for _, _, b, _ in layout.tables}) < len(ROWS), layout
    tx = adagrad_jax.sparse_adagrad(0.1)
    params = {"tables": stacked, "w": jax.device_put(W, NamedSharding(mesh, P()))}
    state = tx.init(params)
    bad = {k: np.full((B, 1), -1, np.int32) for k in ROWS}
    bad["cat"] = np.tile(np.array([5, 6, 7, 12, 40, 2**31 - 1], np.int32), 3)[:B, None]
    assert layout.offset("cat") + 5 < layout.num_rows                  # naive offsetting would hit real rows
    assert (np.asarray(layout.ids("cat", bad["cat"])) == layout.num_rows).all()
    np.testing.assert_array_equal(layout.ids("cat", np.array([-3, 0, 4, 3]), pad_id=3),
                                  [-1, layout.offset("cat"), layout.offset("cat") + 4, -1])
    def oob_step(params, state, ids, tx):
        def stacked_loss(rows):
            return loss({**layout.split_rows(rows["tables"], ids), "w": rows["w"]}, jnp.ones(B))
        _, g = adagrad_jax.value_and_row_grad(stacked_loss)(params, {"tables": layout.concat_ids(ids), "w": None})
        u, state = tx.update(g, state, params)
        return adagrad_jax.apply_updates(params, u), state
    new, new_state = jax.jit(lambda p, s, i: oob_step(p, s, i, tx))(params, state, bad)
    np.testing.assert_array_equal(new["tables"], stacked)
    np.testing.assert_array_equal(new_state[1].sum_of_squares["tables"], state[1].sum_of_squares["tables"])

    # --- structure: no table-sized collective; bytes independent of the block size --
    def compiled(block_rows, kind):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        shapes = {f"t{i}": jax.ShapeDtypeStruct((block_rows // (1 + i % 3), 8), jnp.float32) for i in range(8)}
        abstract, layout = stack_tables(shapes, mesh, "data", block_rows=block_rows)
        tx = adagrad_jax.sparse_adagrad(0.1)
        p = {"tables": abstract, "w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P()))}
        s = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                         jax.eval_shape(tx.init, p), adagrad_jax.state_shardings(tx, p))
        ids = {k: jax.ShapeDtypeStruct((64, 1), jnp.int32, sharding=NamedSharding(mesh, P("data", None))) for k in shapes}
        def step(p, s, ids):
            def f(rows):
                parts = layout.split_rows(rows["tables"], ids)
                return sum(jnp.sum(r @ rows["w"]) for r in parts.values())
            v, g = adagrad_jax.value_and_row_grad(f)(p, {"tables": layout.concat_ids(ids), "w": None})
            u, s = tx.update(g, s, p)
            return adagrad_jax.apply_updates(p, u), s, v
        return jax.jit(step, donate_argnums=(0, 1)).lower(p, s, ids).compile()
    for kind in (AxisType.Explicit, AxisType.Auto):
        small, large = compiled(32768, kind), compiled(65536, kind)
        block_bytes = 32768 * 8 * 4
        lookups = 64 * 8            # ids per step, over all tables
        found = collectives(small.as_text())
        assert found and max(b for _, b in found) <= 4 * lookups * 8 * 4 <= block_bytes // 16, (kind, found)
        assert [b for _, b in found] == [b for _, b in collectives(large.as_text())], kind
        memory = small.memory_analysis()
        assert memory.temp_size_in_bytes == large.memory_analysis().temp_size_in_bytes, kind
        assert memory.argument_size_in_bytes < 2 * block_bytes * 1.1, (kind, memory)   # one block of table and state
        assert memory.alias_size_in_bytes >= 2 * block_bytes, (kind, memory)

    # --- bad input ----------------------------------------------------------------
    mesh = jax.make_mesh((8,), ("data",))
    _, layout = stack_tables(TABLES, mesh, "data")
    with pytest.raises(ValueError, match=r"no table 'shops' in this layout.*Did you mean 'shop'"):
        layout.ids("shops", np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"no table 'x'"):
        layout.concat_ids({"shop": np.zeros((B, 1), np.int32), "x": np.zeros((B, 1), np.int32)})
    with pytest.raises(TypeError, match="ids must be integers"):
        layout.ids("shop", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"table 'shop' has 13 rows, more than a block of 10 rows"):
        stack_tables(TABLES, mesh, "data", block_rows=10)
    with pytest.raises(ValueError, match=r"do not fit 8 blocks of 13 rows"):
        stack_tables({**TABLES, **{f"more{i}": np.zeros((12, D), np.float32) for i in range(6)}},
                     mesh, "data", block_rows=13)
    with pytest.raises(ValueError, match=r"table 'brand' is float32\[7, 4\].*like table 'shop'"):
        stack_tables({"shop": TABLES["shop"], "brand": np.zeros((7, 4), np.float32)}, mesh, "data")
    with pytest.raises(ValueError, match="mesh axis 'dta'.*Did you mean 'data'"):
        stack_tables(TABLES, mesh, "dta")
    with pytest.raises(ValueError, match=r"tables \['lang'\] of the layout are missing"):
        layout.stack({k: v for k, v in TABLES.items() if k != "lang"})
    with pytest.raises(ValueError, match="expected an array with 104 rows"):
        layout.unstack(np.zeros((13, D)))
    # --- placement: small replicated, mid-size table-wise, big row-sharded; overrides win ---
    shapes = {"user": jax.ShapeDtypeStruct((1 << 16, 16), jnp.float32),      # 4 MiB
              "shop": jax.ShapeDtypeStruct((1 << 13, 16), jnp.float32),      # 512 KiB
              "brand": jax.ShapeDtypeStruct((1000, 16), jnp.float32),        # 64 KB, rows not divisible by 8
              "country": jax.ShapeDtypeStruct((200, 16), jnp.float32),
              "w": jax.ShapeDtypeStruct((16,), jnp.float32)}
    proposed = adagrad_jax.propose_placement(shapes, mesh, replicate_below_bytes=1 << 14,
                                             table_wise_below_bytes=1 << 20)
    assert {k: getattr(v, "spec", v) for k, v in proposed.items()} == {
        "user": P("data", None), "shop": TableWise(mesh, "data"), "brand": TableWise(mesh, "data"),
        "country": P(), "w": P()}, proposed
    wise = {k: shapes[k] for k, v in proposed.items() if isinstance(v, TableWise)}
    abstract, layout = stack_tables(wise, mesh, proposed["shop"].axis)
    assert abstract.shape == (8 * 8192, 16) and abstract.sharding.spec == P("data", None), abstract
    again = adagrad_jax.propose_placement(shapes, mesh, overrides={"['user']": "table_wise", "['shop']": P()})
    assert isinstance(again["user"], TableWise) and again["shop"].spec == P(), again
    with pytest.raises(ValueError, match=r"= 'tablewise'; give a PartitionSpec or the string 'table_wise'"):
        adagrad_jax.propose_placement(shapes, mesh, overrides={"['user']": "tablewise"})
    with pytest.raises(ValueError, match=r"or place it whole on one device with overrides=.*'table_wise'"):
        adagrad_jax.propose_placement({"big": jax.ShapeDtypeStruct((60, 1 << 16), jnp.float32)}, mesh)
    print("ok")
""")


def test_table_wise_stacked_tables_train_like_separate_tables_on_one_device():
    """Table-wise placement (issue 9, "many tables"): five tables stacked by
    `stack_tables` over 8 devices, each device holding whole tables, train with
    every row-sparse spec whose rule acts on each row alone (Explicit axes;
    ftrl and row-wise sparse_adagrad on Auto axes too) to the result of the separate tables on one device (to
    float32 rounding: duplicate ids and the batch mean are summed across
    devices); ids outside a table's range leave every row of the stacked
    array and its state unchanged; the compiled step's collectives are sized
    by the ids (at most 3 x ids x dim bytes here), the same with twice the
    block size, and each device's arguments are one block of the table and
    of its accumulator; bad input (unknown table, too small a block, mixed
    row shapes, missing tables) fails clearly; propose_placement marks
    mid-size tables TableWise."""
    assert _python(["-c", TABLE_WISE_SCRIPT]).strip().endswith("ok")


def test_eight_devices_equal_one_device(tmp_path):
    """The recommendation-style model of tests/scale_out_worker.py, 8 devices against 1."""
    _python(["-m", "tests.scale_out_worker", "single", str(tmp_path / "single.npz")])
    runs = np.load(tmp_path / "single.npz")
    for key in KEYS:
        np.testing.assert_allclose(runs[f"8/{key}"], runs[f"1/{key}"], rtol=1e-5, atol=1e-6)
    _assert_out_of_range_error(str(runs["error"]))


def _assert_out_of_range_error(message: str) -> None:
    """The error of the worker's out_of_range='error' step (bad id 69 at the end
    of 48 ids), raised cleanly on a sharded step: every device runs the check."""
    assert message.endswith(
        "sparse_adagrad(out_of_range='error'): updates['big'] holds row id 69 at"
        " position 47, but the table has 64 rows (ids 0 to 63; negative ids are"
        " padding). Fix the ids, or pass out_of_range='drop' to skip such ids."
    ), message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    """2 processes x 4 CPU devices (jax.distributed, gloo) train the model of
    tests/scale_out_worker.py: the result equals 8 devices in one process and 1
    device to float32 rounding (not bit for bit: gloo's all-reduce across the
    processes adds the devices' partial sums, of the loss gradient's batch mean
    and of duplicate ids, in another order than XLA's in-process all-reduce).
    Both processes are killed if either fails or time runs out."""
    _python(["-m", "tests.scale_out_worker", "single", str(tmp_path / "single.npz")])
    port = _free_port()
    out = tmp_path / "multi.npz"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.scale_out_worker",
                "process",
                str(out),
                str(pid),
                str(port),
            ],
            cwd=ROOT,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    try:
        errors = [p.communicate(timeout=50)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-2000:] for e in errors)
    multi, single = np.load(out), np.load(tmp_path / "single.npz")
    for pid in (0, 1):
        _assert_out_of_range_error(str(np.load(f"{out}.error{pid}.npy")))
    for key in KEYS:
        np.testing.assert_allclose(multi[key], single[f"8/{key}"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(multi[key], single[f"1/{key}"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("orbax") is None,
    reason="orbax-checkpoint is an optional extra: pip install .[checkpoint]",
)
def test_orbax_checkpoint_of_sharded_state_resumes(tmp_path):
    """Save after 2 of 4 steps on 8 devices; restore onto the same mesh (resume is
    bit-equal to the uninterrupted run) and onto 4 devices (equal to float32
    rounding: reductions over 4 shards group the sums differently)."""
    _python(
        [
            "-m",
            "tests.scale_out_worker",
            "checkpoint",
            str(tmp_path / "c.npz"),
            str(tmp_path / "ckpt"),
        ]
    )
    runs = np.load(tmp_path / "c.npz")
    for key in KEYS:
        np.testing.assert_array_equal(runs[f"same/{key}"], runs[f"full/{key}"], err_msg=key)
        np.testing.assert_allclose(runs[f"four/{key}"], runs[f"full/{key}"], rtol=1e-5, atol=1e-6)


def test_scaling_benchmark_quick():
    """benchmarks/scaling.py --quick: per-device table+state bytes within 1.1x of
    total / n, collective bytes unchanged when the rows double and of the order of
    ids x dim; temporaries, too, independent of the rows."""
    # Run as a user runs it; it starts its own interpreter with 8 simulated devices.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--quick", "--time-rows", "0", "--json"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for row in results["devices"]:
        assert row["table_and_state_per_device_over_ideal"] <= 1.1, row
        assert row["collective_bytes"] == row["collective_bytes_2x_rows"], row
        assert row["largest_collective_bytes"] <= 4 * row["ids_times_dim_bytes"], row
        # Temporaries hold the step's ids and rows (all devices' ids: the
        # partitioner gathers them), never rows of the table.
        assert row["temp_bytes"] == row["temp_bytes_2x_rows"], row
        assert row["temp_bytes"] <= 8 * row["ids_times_dim_bytes"], row
    assert results["devices"][0]["collective_bytes"] == 0
    assert set(results["lookup"]) == {"partitioner", "shard_map all-to-all"}
