"""8-bit accumulators (``accumulator_dtype="int8"``, adagrad_jax/_src/core/quantized.py).

What must hold:

* the code: values within a block decode within half a level (6%) of themselves
  to nearest, a block's scale bounds its values within a factor of the block size, unbiased under stochastic requantization (mean of many draws
  within 1%), constants such as tau exactly, zeros as zeros;
* memory: the state of a (V, 64) table or a 4096 x 4096 layer is at most 0.3x
  the float32 accumulator's bytes; vectors keep float32;
* a table trained row by row equals dense training bit for bit (every row
  touched: the requantization is keyed by row ids), untouched rows keep their
  codes and scales; an 8-device sharded table trains as on one device;
* quality: least squares within 2% of float32 adagrad's final excess loss;
* the two-slot optimizers (ftrl, adagrad_da, adagrad_momentum) keep the sum of
  squares in 8 bits and the signed slot in float32, and train near float32;
* a sum that decodes to 0 (below 2**-32 of its block's scale) gives a zero step,
  not NaN, whatever tau;
* errors: row_wise, and stack_slots=True on the two-slot optimizers, refuse
  "int8" by name; any other non-float string or dtype is refused naming
  accumulator_dtype.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse
from adagrad_jax._src.core import quantized


def test_code_precision_zeros_and_constants():
    rng = np.random.default_rng(0)
    x = jnp.asarray(10.0 ** rng.uniform(-6, 2, (5, 130)), jnp.float32).at[1, 7].set(0.0)
    coded = quantized.quantize(x, None)
    assert coded.codes.dtype == jnp.uint8 and coded.scales.shape == (5, 3)
    back = quantized.dequantize(coded)
    block_max = jnp.repeat(coded.scales, 64, axis=1)[:, :130]
    in_range = x >= 2.0**-32 * block_max
    ratio = jnp.where(in_range & (x > 0), back / jnp.where(x > 0, x, 1.0), 1.0)
    assert float(jnp.max(jnp.abs(ratio - 1))) <= 1 / 16 + 1e-6  # half a level (1/8 of 1.0)
    assert float(back[1, 7]) == 0.0
    np.testing.assert_array_equal(jnp.max(back[:, :64], axis=1), coded.scales[:, 0])  # exact max
    for tau in (0.0, 0.1, 3.0):
        np.testing.assert_array_equal(quantized.dequantize(quantized.full((4, 70), tau)),
                                      np.float32(tau))


def test_stochastic_requantization_is_unbiased():
    x = jnp.asarray(10.0 ** np.random.default_rng(1).uniform(-4, 1, (2, 64)), jnp.float32)
    bits = jax.random.bits(jax.random.key(0), (2000, 2, 64), jnp.uint32)
    mean = jnp.mean(jax.vmap(lambda b: quantized.dequantize(quantized.quantize(x, b)))(bits), 0)
    assert float(jnp.max(jnp.abs(mean / x - 1))) < 0.01


def test_scales_bound_their_blocks_within_a_factor_of_the_block_size():
    """A block's scale grows by the block's largest square (no pass over the new sums):
    it bounds every decoded value and stays within 64x (the block size) of the
    largest float32 sum of the block, over many steps of very uneven squares (the
    decoded sums differ from the float32 ones by the rounding noise)."""
    rng = np.random.default_rng(3)
    tx = adagrad_jax.adagrad(0.1, accumulator_dtype="int8", initial_accumulator_value=0.0)
    w = jnp.zeros((4, 130))
    state = tx.init(w)
    exact = np.zeros((4, 130))
    update = jax.jit(tx.update)
    for _ in range(60):
        g = rng.normal(size=(4, 130)) * 10.0 ** rng.uniform(-3, 1, (4, 130))
        exact += np.float32(g) ** 2
        _, state = update(jnp.asarray(g, jnp.float32), state, w)
        (acc,) = [x for x in jax.tree.leaves(state, is_leaf=quantized.is_int8)
                  if quantized.is_int8(x)]
        decoded = np.asarray(quantized.dequantize(acc))
        for b, cols in enumerate((slice(0, 64), slice(64, 128), slice(128, 130))):
            scale = np.asarray(acc.scales[:, b])
            assert np.all(decoded[:, cols].max(axis=1) <= scale)
            # The scale keeps up with the sums (a stale one would clip them: r <= 1)...
            assert np.all(exact[:, cols].max(axis=1) <= 1.5 * scale)
            # ...and exceeds them by at most the block size.
            assert np.all(scale <= 64 * exact[:, cols].max(axis=1) * (1 + 1e-5))


@pytest.mark.parametrize("shape", [(1000, 64), (4096, 4096), (300, 16)], ids=str)
def test_state_bytes(shape):
    params = jax.ShapeDtypeStruct(shape, jnp.float32)
    int8 = jax.eval_shape(adagrad_jax.adagrad(accumulator_dtype="int8").init, params)
    f32 = jax.eval_shape(adagrad_jax.adagrad().init, params)

    def nbytes(state):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if len(x.shape))

    ratio = nbytes(int8) / nbytes(f32)
    # One float32 scale per block of min(64, D) codes: (64 + 4) / 256 for D >= 64;
    # rows narrower than 64 pay one scale each ((16 + 4) / 64 = 0.31 for D = 16).
    assert ratio <= (0.3 if shape[1] >= 64 else (shape[1] + 4) / (4 * shape[1])), ratio
    vector = adagrad_jax.adagrad(accumulator_dtype="int8").init(jnp.zeros(5))
    assert jax.tree.leaves(vector)[-1].dtype == jnp.float32  # vectors keep float32


def _train(tx, params, grads, apply):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params)
        params = apply(params, u)
    return params, state


ALL_INT8 = {
    "adagrad": lambda: adagrad_jax.adagrad(0.1, accumulator_dtype="int8"),
    "proximal_adagrad": lambda: adagrad_jax.proximal_adagrad(
        0.1, 0.1, l1=1e-3, accumulator_dtype="int8"),
    "ftrl": lambda: adagrad_jax.ftrl(0.1, l1=1e-3, accumulator_dtype="int8"),
    "adagrad_da": lambda: adagrad_jax.adagrad_da(0.1, l1=1e-3, accumulator_dtype="int8"),
    "adagrad_momentum": lambda: adagrad_jax.adagrad_momentum(
        0.1, momentum=0.9, accumulator_dtype="int8"),
}


@pytest.mark.parametrize("name", ALL_INT8)
def test_table_rows_equal_dense_and_untouched_rows_keep_their_codes(name):
    make = ALL_INT8[name]
    v, d = 40, 70  # two blocks per row, the second partial
    rng = np.random.default_rng(2)
    w0 = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=(v, d)) * 10.0 ** rng.uniform(-3, 1, d), jnp.float32)
             for _ in range(4)]
    perms = [jnp.asarray(rng.permutation(v)) for _ in grads]
    dense, dense_state = _train(make(), w0, grads, optax.apply_updates)
    rows, rows_state = _train(make(), w0, [RowSparse(p, g[p]) for p, g in zip(perms, grads)],
                              adagrad_jax.apply_updates)
    # adagrad_momentum's float32 m may differ by an ulp: XLA contracts its multiply-add
    # into one rounding in one of the two programs and not in the other.
    same = np.testing.assert_array_equal if name != "adagrad_momentum" else functools.partial(
        np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    same(dense, rows)
    for a, b in zip(jax.tree.leaves(dense_state), jax.tree.leaves(rows_state)):
        (np.testing.assert_array_equal if a.dtype == jnp.uint8 else same)(a, b)
    # Rows 0-9 only: the other rows keep codes, scales and weights.
    tx = make()
    state0 = tx.init(w0)
    ids = jnp.arange(10)
    u, state = jax.jit(tx.update)(RowSparse(ids, grads[0][:10]), state0, w0)
    new = adagrad_jax.apply_updates(w0, u)
    np.testing.assert_array_equal(new[10:], w0[10:])
    acc0 = adagrad_jax.accumulators(state0)
    acc = adagrad_jax.accumulators(state)
    np.testing.assert_array_equal(acc[10:], acc0[10:])
    # (An 8-bit sum may come down one level, its expectation is the sum: on average up.)
    assert float(jnp.mean(acc[:10])) > float(jnp.mean(acc0[:10]))
    # The sum of squares is the 8-bit slot; a signed slot beside it is float32.
    coded = [x for x in jax.tree.leaves(state, is_leaf=quantized.is_int8) if quantized.is_int8(x)]
    assert len(coded) == 1
    others = [x for x in jax.tree.leaves(state, is_leaf=quantized.is_int8)
              if not quantized.is_int8(x) and x.shape == (v, d)]
    assert all(x.dtype == jnp.float32 for x in others), [x.dtype for x in others]


def test_least_squares_final_loss_within_two_percent_of_float32():
    """256 features whose scales span two decades, full-batch steps (no sampling noise:
    the difference is the accumulator's); the best of one learning-rate sweep each."""
    rng = np.random.default_rng(0)
    n, d = 2048, 256
    a = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-1, 1, d)
    b = a @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss(w):
        return 0.5 * jnp.mean((a @ w[0] - b) ** 2)

    def final(accumulator_dtype, lr):
        # A 2-D parameter (1, d), so that the 8-bit code applies (vectors keep float32).
        tx = adagrad_jax.adagrad(lr, accumulator_dtype=accumulator_dtype)

        def step(carry, _):
            w, state = carry
            u, state = tx.update(jax.grad(loss)(w), state, w)
            return (optax.apply_updates(w, u), state), None

        w = jnp.zeros((1, d))
        (w, _), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=60)
        return float(loss(w))

    rates = (0.1, 0.3, 1.0)
    f32 = min(final(None, lr) for lr in rates)
    int8 = min(final("int8", lr) for lr in rates)
    floor = float(loss(jnp.linalg.lstsq(a, b)[0][None]))
    assert f32 < 1.5 * floor  # trained: the comparison is of trained models
    assert abs(int8 / f32 - 1) < 0.02, (int8, f32)


@pytest.mark.parametrize("name", ["ftrl", "adagrad_da", "adagrad_momentum"])
def test_two_slot_optimizers_train_near_float32(name):
    """A (40, 70) table trained 30 steps on gradients whose scales span 4 decades: the
    int8 run ends within 10% of the float32 run's mean distance moved (measured:
    ftrl 2.6%, adagrad_da 4.9%, adagrad_momentum 1.5%; ftrl reads n as stored, so
    that its z does not gather the rounding noise, which cost it about 130% of
    the largest move when it read the unrounded sum)."""
    rng = np.random.default_rng(4)
    w0 = jnp.asarray(rng.normal(size=(40, 70)), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=(40, 70)) * 10.0 ** rng.uniform(-3, 1, 70),
                         jnp.float32) for _ in range(30)]
    make = {"ftrl": adagrad_jax.ftrl, "adagrad_da": adagrad_jax.adagrad_da,
            "adagrad_momentum": adagrad_jax.adagrad_momentum}[name]
    args = {"momentum": 0.9} if name == "adagrad_momentum" else {"l1": 1e-3}
    f32, _ = _train(make(0.1, **args), w0, grads, optax.apply_updates)
    int8, state = _train(make(0.1, accumulator_dtype="int8", **args), w0, grads,
                         optax.apply_updates)
    moved = float(jnp.mean(jnp.abs(f32 - w0)))
    assert float(jnp.mean(jnp.abs(int8 - f32))) < 0.1 * moved
    _, f32_state = _train(make(0.1, **args), w0, grads, optax.apply_updates)
    ratio = adagrad_jax.accumulators(state) / adagrad_jax.accumulators(f32_state)
    assert abs(float(jnp.median(ratio)) - 1) < 0.05


ZERO_FLOOR = {  # eps = 0 (beta = 0 for ftrl): only tau keeps a float32 sum above 0
    "adagrad": lambda: adagrad_jax.adagrad(0.1, 0.1, eps=0.0, accumulator_dtype="int8"),
    "proximal_adagrad": lambda: adagrad_jax.proximal_adagrad(
        0.1, 0.1, eps=0.0, accumulator_dtype="int8"),
    "ftrl": lambda: adagrad_jax.ftrl(0.1, beta=0.0, accumulator_dtype="int8"),
    "adagrad_da": lambda: adagrad_jax.adagrad_da(0.1, eps=0.0, accumulator_dtype="int8"),
    "adagrad_momentum": lambda: adagrad_jax.adagrad_momentum(
        0.1, eps=0.0, initial_accumulator_value=0.1, accumulator_dtype="int8"),
}


@pytest.mark.parametrize("name", ZERO_FLOOR)
def test_a_sum_decoded_as_zero_steps_by_zero(name):
    """tau = 0.1 beside a coordinate whose squares reach 1e16: 0.1 is below 2**-32 of
    the block's scale and decodes to 0. Nothing but the guard then keeps that
    coordinate's step finite: it must be 0 (a guard compiled out for tau > 0
    would give 0/0)."""
    tx = ZERO_FLOOR[name]()
    w = jnp.ones((2, 8))
    state = tx.init(w)
    g = jnp.zeros((2, 8)).at[:, 0].set(1e8)
    for _ in range(2):
        u, state = jax.jit(tx.update)(g, state, w)
        w = optax.apply_updates(w, u)
    assert bool(jnp.all(jnp.isfinite(w))), w
    assert float(jnp.min(adagrad_jax.accumulators(state)[:, 1:])) == 0.0  # decoded as 0


def test_skip_step_keeps_the_codes():
    tx = adagrad_jax.adagrad(0.1, accumulator_dtype="int8", nonfinite="skip_step")
    w = jnp.ones((3, 8))
    state = tx.init(w)
    _, state = jax.jit(tx.update)(jnp.ones((3, 8)), state, w)
    g = jnp.ones((3, 8)).at[0, 0].set(jnp.nan)
    _, new = jax.jit(tx.update)(g, state, w)
    for a, b in zip(jax.tree.leaves(new.inner_state), jax.tree.leaves(state.inner_state)):
        if a.ndim:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, words", [
    (lambda: adagrad_jax.adagrad(accumulator_dtype="int8", row_wise=True),
     ("adagrad(accumulator_dtype='int8')", "row_wise")),
    (lambda: adagrad_jax.ftrl(accumulator_dtype="int8", stack_slots=True),
     ("ftrl(accumulator_dtype='int8')", "stack_slots=True holds n and z")),
    (lambda: adagrad_jax.adagrad_da(accumulator_dtype="int8", stack_slots=True),
     ("adagrad_da(accumulator_dtype='int8')", "stack_slots=True holds z and G")),
    (lambda: adagrad_jax.adagrad_momentum(accumulator_dtype="int8", stack_slots=True),
     ("adagrad_momentum(accumulator_dtype='int8')", "stack_slots=True holds a and m")),
    (lambda: adagrad_jax.adagrad(accumulator_dtype="int4"), ("accumulator_dtype='int4'", "'int8'")),
    (lambda: adagrad_jax.adagrad(accumulator_dtype="uint8"), ("accumulator_dtype='uint8'", "'int8'")),
], ids=["row_wise", "ftrl", "adagrad_da", "adagrad_momentum", "int4", "uint8"])
def test_refusals_name_the_argument(make, words):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def _sharded_run() -> dict:
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(0)
    v, d, k = 64, 16, 24
    w0 = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
    batches = [(jnp.asarray(rng.integers(-1, v, k), jnp.int32),
                jnp.asarray(rng.normal(size=(k, d)), jnp.float32)) for _ in range(3)]
    tx = adagrad_jax.adagrad(0.05, accumulator_dtype="int8")
    single, single_state = _train(tx, w0, [RowSparse(i, g) for i, g in batches],
                                  adagrad_jax.apply_updates)
    table = jax.device_put(w0, NamedSharding(mesh, P("rows")))
    with jax.set_mesh(mesh):
        sharded, sharded_state = _train(tx, table, [RowSparse(i, g) for i, g in batches],
                                        adagrad_jax.apply_updates)
    acc = sharded_state.inner_state[1].sum_of_squares
    return {
        "equal": bool(np.array_equal(np.asarray(single), np.asarray(sharded))),
        "state_equal": all(bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(
            jax.tree.leaves(single_state), jax.tree.leaves(sharded_state))),
        "codes_spec": str(acc.codes.sharding.spec),
        "scales_spec": str(acc.scales.sharding.spec),
    }


def test_sharded_table_trains_as_on_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tests.test_int8"], env=env,
                         capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["equal"] and r["state_equal"], r
    assert "rows" in r["codes_spec"] and "rows" in r["scales_spec"], r


if __name__ == "__main__":
    print(json.dumps(_sharded_run()))
