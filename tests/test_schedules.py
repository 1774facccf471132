"""The schedules of adagrad_jax.schedules, against their formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adagrad_jax import schedules

COUNTS = np.arange(0, 50)


def test_inverse_sqrt_decay_formula():
    """lr_t = eta / sqrt(t + 1), t from 0 (the slides' 1/t decay)."""
    schedule = schedules.inverse_sqrt_decay(0.3)
    got = jax.vmap(schedule)(jnp.asarray(COUNTS))
    np.testing.assert_allclose(got, 0.3 / np.sqrt(COUNTS + 1), rtol=1e-6)


def test_inverse_time_decay_formula():
    """lr_t = eta / (1 + d t): PyTorch's lr / (1 + (step - 1) lr_decay)."""
    schedule = schedules.inverse_time_decay(0.1, 0.25)
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(COUNTS))
    np.testing.assert_allclose(got, 0.1 / (1 + 0.25 * COUNTS), rtol=1e-6)
    assert float(schedules.inverse_time_decay(0.1, 0.0)(1000)) == pytest.approx(0.1)


def test_schedules_follow_the_default_float_dtype():
    assert schedules.inverse_sqrt_decay(1.0)(3).dtype == jnp.float32
    with jax.enable_x64(True):
        value = schedules.inverse_sqrt_decay(1.0)(3)
        assert value.dtype == jnp.float64 and float(value) == 0.5


def test_schedules_accept_traced_values():
    schedule = jax.jit(lambda lr, t: schedules.inverse_time_decay(lr, 0.5)(t))
    np.testing.assert_allclose(schedule(jnp.float32(0.2), 2), 0.1, rtol=1e-6)
