"""Structural facts that keep the training step fast, without timing anything.

Each test reads the compiled program (or counts traces) instead of a clock:
no retrace on repeated calls, donated outputs written in place, and the number
of loops the program runs over a parameter's memory. The loop counts are those
of XLA:CPU, which has no multi-output fusion; other backends are skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import adagrad_jax
from devtools import hlo

N = 1 << 16  # large enough that every loop over it shows in the program
cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="loop counts are those of XLA:CPU"
)


def per_leaf_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compiled_packed_step(params, *, donate=True, **kwargs):
    opt = adagrad_jax.packed_adagrad(**kwargs)
    state = opt.init(params)
    fn = jax.jit(opt.step, donate_argnums=(0,) if donate else ())
    return fn.lower(state, jax.tree.map(jnp.ones_like, params)).compile(), state


def test_no_retrace_on_repeated_steps():
    traces = []
    opt = adagrad_jax.packed_adagrad(learning_rate=optax.linear_schedule(0.1, 0.0, 10))

    def step(state, grads):
        traces.append(1)
        return opt.step(state, grads)

    params = {"a": jnp.ones((3, 2)), "b": [jnp.ones(5, jnp.bfloat16), jnp.ones(())]}
    state = opt.init(params)
    jitted = jax.jit(step, donate_argnums=0)
    for _ in range(3):
        state = jitted(state, jax.tree.map(jnp.ones_like, params))
    assert len(traces) == 1


@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "split"])
def test_donated_step_updates_the_buffers_in_place(interleave):
    params = {"w": jnp.ones(N), "v": jnp.ones((4, 8))}
    opt = adagrad_jax.packed_adagrad(interleave=interleave)
    state = opt.init(params)
    compiled = jax.jit(opt.step, donate_argnums=0).lower(state, params).compile()
    leaves = jax.tree.leaves(state)
    # Every state array (count, buffers, gradient buffer) aliases an input ...
    assert hlo.aliased_outputs(compiled.as_text()) == len(leaves)
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * N  # no group-sized temporary
    # ... and at run time the new state lives in the old state's memory.
    pointers = {x.unsafe_buffer_pointer() for x in leaves}
    new_state = compiled(state, params)
    assert all(x.is_deleted() for x in leaves)
    assert {x.unsafe_buffer_pointer() for x in jax.tree.leaves(new_state)} == pointers


def test_without_donation_nothing_is_aliased():
    compiled, _ = compiled_packed_step({"w": jnp.ones(N)}, donate=False)
    assert hlo.aliased_outputs(compiled.as_text()) == 0


@cpu_only
def test_packed_dense_step_is_one_loop_of_20_bytes_per_element():
    """Read w, G, g and write w, G: 5 float32 per element, in one in-place loop."""
    compiled, _ = compiled_packed_step({"w": jnp.ones(N)})
    text = compiled.as_text()
    assert [op for op, _ in hlo.loops_over(text, N)] == ["fusion"]
    assert "copy(" not in text
    bytes_per_element = compiled.cost_analysis()["bytes accessed"] / N
    assert bytes_per_element == pytest.approx(20.0, abs=0.01)


@cpu_only
def test_split_layout_and_per_leaf_adagrad_are_two_loops():
    """Without the complex layout XLA:CPU writes G and w in two loops (28 B/elt)."""
    compiled, _ = compiled_packed_step({"w": jnp.ones(N)}, interleave=False)
    assert len(hlo.loops_over(compiled.as_text(), N)) == 2
    tx = adagrad_jax.adagrad()
    params = jnp.ones(N)
    per_leaf = (
        jax.jit(per_leaf_step(tx), donate_argnums=(0, 1))
        .lower(params, tx.init(params), params)
        .compile()
    )
    assert len(hlo.loops_over(per_leaf.as_text(), N)) == 2
    assert per_leaf.cost_analysis()["bytes accessed"] / N == pytest.approx(28.0, abs=0.01)


@cpu_only
def test_many_leaves_are_two_loops_not_two_per_leaf():
    """Pack the gradients (one concatenation) then one update loop, for 64 leaves."""
    leaves = 64
    params = [jnp.ones(N // leaves) for _ in range(leaves)]
    compiled, _ = compiled_packed_step(params)
    loops = hlo.loops_over(compiled.as_text(), N // leaves)
    assert sorted(op for op, _ in loops) == ["concatenate", "fusion"]


@cpu_only
def test_training_step_through_views_fuses_the_gradient_into_the_update():
    """An elementwise loss of one leaf: the whole step is one loop over the buffer."""
    opt = adagrad_jax.packed_adagrad()
    state = opt.init({"w": jnp.ones((N // 64, 64))})

    def train_step(state, target):
        grads = jax.grad(lambda p: jnp.sum((p["w"] - target) ** 2))(opt.params(state))
        return opt.step(state, grads)

    compiled = jax.jit(train_step, donate_argnums=0).lower(state, jnp.float32(2.0)).compile()
    assert len(hlo.loops_over(compiled.as_text(), N)) == 1
