"""Parity with other libraries (ARCHITECTURE.md, rule 2), step for step.

Each preset is compared with a NumPy transcription of the peer's documented
rule (tests/reference.py) on cases that tell the epsilon placements apart
(eps = 1.0) and that exercise lr decay and weight decay; optax and, when it is
installed, PyTorch itself are run side by side as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import compat, schedules
from tests import reference

NUM_STEPS = 6


def trajectory(tx, w0, grads, x64=True):
    """Parameters after each step, in float64."""
    with jax.enable_x64(x64):
        w = jnp.asarray(w0, jnp.float64 if x64 else jnp.float32)
        state = tx.init(w)
        out = []
        for g in grads:
            u, state = tx.update(jnp.asarray(g, w.dtype), state, w)
            w = optax.apply_updates(w, u)
            out.append(np.asarray(w, np.float64))
        return out


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(NUM_STEPS)]
    grads[0][0, 0] = 0.0  # a coordinate whose first gradient is zero
    return w0, grads


def assert_trajectories_equal(ours, theirs, rtol=1e-12):
    for t, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("hyper", [
    dict(lr=0.1, eps=1.0),
    dict(lr=0.1, lr_decay=0.5),
    dict(lr=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-10),
    dict(lr=0.05, maximize=True, weight_decay=0.1),
])
def test_torch_preset_matches_torch_rule(problem, hyper):
    w0, grads = problem
    hyper = dict(hyper)
    tau = hyper.pop("initial_accumulator_value", 0.0)
    ours = trajectory(compat.torch_adagrad(initial_accumulator_value=tau, **hyper), w0, grads)
    theirs, _ = reference.run(reference.torch_step, w0, grads, np.full_like(w0, tau), **hyper)
    assert_trajectories_equal(ours, theirs)


@pytest.mark.parametrize("hyper", [
    dict(learning_rate=0.1, epsilon=1.0),
    dict(learning_rate=0.1, epsilon=1e-7, weight_decay=0.05),
    dict(),
])
def test_keras3_preset_matches_keras3_rule(problem, hyper):
    w0, grads = problem
    ours = trajectory(compat.keras_adagrad(**hyper), w0, grads)
    ref_hyper = {"lr": hyper.get("learning_rate", 0.001), "epsilon": hyper.get("epsilon", 1e-7),
                 "weight_decay": hyper.get("weight_decay")}
    theirs, _ = reference.run(reference.keras3_step, w0, grads, np.full_like(w0, 0.1), **ref_hyper)
    assert_trajectories_equal(ours, theirs)


def test_tf1_preset_matches_tf1_rule(problem):
    w0, grads = problem
    ours = trajectory(compat.tf1_adagrad(0.2), w0, grads)
    theirs, _ = reference.run(reference.tf1_step, w0, grads, np.full_like(w0, 0.1), lr=0.2)
    assert_trajectories_equal(ours, theirs)


def test_legacy_keras_recipe(problem):
    """Legacy Keras (eps outside, tau 0.1, decay) is adagrad with inverse_time_decay."""
    w0, grads = problem
    tx = adagrad_jax.adagrad(schedules.inverse_time_decay(0.1, 0.3), 0.1, eps=1e-7)
    theirs, _ = reference.run(reference.legacy_keras_step, w0, grads, np.full_like(w0, 0.1),
                              lr=0.1, epsilon=1e-7, decay=0.3)
    assert_trajectories_equal(trajectory(tx, w0, grads), theirs)


def test_optax_recipe_against_optax_itself(problem):
    """optax.adagrad == adagrad(lr, 0.1, eps=0, eps_root=1e-7), zero guard included."""
    w0, grads = problem
    ours = trajectory(adagrad_jax.adagrad(0.1, 0.1, eps=0.0, eps_root=1e-7), w0, grads)
    theirs = trajectory(optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7), w0, grads)
    assert_trajectories_equal(ours, theirs)
    ref, _ = reference.run(reference.optax_step, w0, grads, np.full_like(w0, 0.1), lr=0.1)
    assert_trajectories_equal(ours, ref)
    # With tau = 0 optax returns 0 where nothing was accumulated; so do we.
    zero_first = [np.zeros_like(w0)] + grads
    ours = trajectory(adagrad_jax.adagrad(0.1, 0.0, eps=0.0, eps_root=1e-7), w0, zero_first)
    theirs = trajectory(optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-7), w0,
                        zero_first)
    assert_trajectories_equal(ours, theirs)


def test_eps_placements_really_differ(problem):
    """eps = 1.0 separates the rules: the presets must not agree with each other."""
    w0, grads = problem
    torch_like = trajectory(compat.torch_adagrad(lr=0.1, eps=1.0), w0, grads)
    keras_like = trajectory(compat.keras_adagrad(learning_rate=0.1, epsilon=1.0,
                                                 initial_accumulator_value=0.0), w0, grads)
    assert np.max(np.abs(torch_like[-1] - keras_like[-1])) > 1e-3


def test_tf1_requires_positive_accumulator():
    with pytest.raises(ValueError, match=r"tf1_adagrad\(initial_accumulator_value=0.0\)"):
        compat.tf1_adagrad(0.1, initial_accumulator_value=0.0)


def test_torch_lr_decay_with_schedule_is_rejected():
    with pytest.raises(ValueError, match=r"torch_adagrad\(lr_decay=0.1\)"):
        compat.torch_adagrad(lr=optax.constant_schedule(0.1), lr_decay=0.1)


def test_torch_maximize_must_be_bool():
    with pytest.raises(TypeError, match=r"torch_adagrad\(maximize=1\)"):
        compat.torch_adagrad(maximize=1)


def test_unknown_peer_argument_suggests_our_name():
    with pytest.raises(TypeError, match=r"Did you mean 'epsilon'"):
        compat.keras_adagrad(eps=1e-7)


# --- against PyTorch itself --------------------------------------------------------

@pytest.mark.parametrize("hyper", [
    dict(lr=0.1, eps=1.0),
    dict(lr=0.1, lr_decay=0.3, weight_decay=0.05, initial_accumulator_value=0.2),
    dict(lr=0.05, maximize=True),
    dict(),
])
def test_torch_preset_against_torch_itself(problem, hyper):
    torch = pytest.importorskip("torch")
    w0, grads = problem
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adagrad([w], **hyper)
    theirs = []
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        theirs.append(w.detach().numpy().copy())
    ours = trajectory(compat.torch_adagrad(**hyper), w0, grads)
    assert_trajectories_equal(ours, theirs, rtol=1e-12)
