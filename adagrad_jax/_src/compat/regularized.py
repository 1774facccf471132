"""Peer presets of the regularized family: TF1's proximal Adagrad and Adagrad-DA, Keras' FTRL.

Re-exported by `adagrad_jax.compat`; each keeps the peer's argument names and
defaults and converts them to this package's rule.
"""

from __future__ import annotations

import jax
import optax

from adagrad_jax._src.core import checks, nonfinite_policy
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.regularized.adagrad_da import adagrad_da
from adagrad_jax._src.regularized.ftrl import ftrl
from adagrad_jax._src.regularized.proximal_adagrad import proximal_adagrad


@checks.checked_arguments
@shared_args
def tf1_proximal_adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    l1_regularization_strength: jax.typing.ArrayLike = 0.0,
    l2_regularization_strength: jax.typing.ArrayLike = 0.0,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """TF1's `tf.compat.v1.train.ProximalAdagradOptimizer`, same names and defaults.

    TF's ApplyProximalAdagrad kernel, at every step::

        accum  += g^2                                accum_0 = initial_accumulator_value
        a       = learning_rate / sqrt(accum)
        v       = w - a * g
        w       = sign(v) * max(|v| - a * l1, 0) / (1 + a * l2)

    which is ``adagrad_jax.proximal_adagrad(learning_rate,
    initial_accumulator_value, eps=0.0, l1=l1_regularization_strength,
    l2=l2_regularization_strength)``. TF's sparse kernel updates only the rows
    in the gradient; so does ours for `RowSparse` gradients.

    Args:
      learning_rate: required, >= 0, or an optax schedule.
      {initial_accumulator_value}
        Must be > 0, as in TF1 (it is the only guard against division by
        zero). Default 0.1.
      l1_regularization_strength: l1 (>= 0). Default 0.
      l2_regularization_strength: l2 (>= 0). Default 0.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` (a `proximal_adagrad`).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adagrad_jax.compat import tf1_proximal_adagrad
      >>> tx = tf1_proximal_adagrad(3.0, l1_regularization_strength=0.001,
      ...                           l2_regularization_strength=0.0)
      >>> w = jnp.array([1.0, 2.0])
      >>> u, _ = tx.update(jnp.array([0.1, 0.2]), tx.init(w), w)
      >>> optax.apply_updates(w, u)    # a = 3 / sqrt(0.1 + 0.01); a * g; minus a * 0.001
      Array([0.0864206 , 0.38841462], dtype=float32)
    """
    caller = "tf1_proximal_adagrad"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(
        caller, "initial_accumulator_value", initial_accumulator_value, positive=True
    )
    checks.check_number(caller, "l1_regularization_strength", l1_regularization_strength)
    checks.check_number(caller, "l2_regularization_strength", l2_regularization_strength)
    nonfinite_policy.check(caller, nonfinite)
    return proximal_adagrad(
        learning_rate,
        initial_accumulator_value,
        0.0,
        l1=l1_regularization_strength,
        l2=l2_regularization_strength,
        nonfinite=nonfinite,
    )


@checks.checked_arguments
@shared_args
def tf1_adagrad_da(
    learning_rate: optax.ScalarOrSchedule,
    initial_gradient_squared_accumulator_value: jax.typing.ArrayLike = 0.1,
    l1_regularization_strength: jax.typing.ArrayLike = 0.0,
    l2_regularization_strength: jax.typing.ArrayLike = 0.0,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """TF1's `tf.compat.v1.train.AdagradDAOptimizer`, same names and defaults.

    TF's ApplyAdagradDA kernel, with t the global step after the increment
    (1 at the first step; here the optimizer's own step count)::

        z      += g                                  z_0 = 0
        G      += g^2                   G_0 = initial_gradient_squared_accumulator_value
        w       = -sign(z) * lr * max(|z| - l1 * t, 0) / (lr * l2 * t + sqrt(G))

    which is ``adagrad_jax.adagrad_da(learning_rate, tau, l1=..., l2=...,
    eps=0.0, warm_start=False)``: the starting weights are ignored, as in TF1.
    TF's global step is shared by every variable and given to
    ``apply_gradients``; here each optimizer counts its own steps, which is
    the same when the step is incremented once per update.

    Args:
      learning_rate: required, >= 0, or an optax schedule.
      initial_gradient_squared_accumulator_value: G_0 (> 0). Default 0.1.
      l1_regularization_strength: l1 (>= 0). Default 0.
      l2_regularization_strength: l2 (>= 0). Default 0.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` (an `adagrad_da`).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adagrad_jax.compat import tf1_adagrad_da
      >>> tx = tf1_adagrad_da(3.0)      # TF1's own test: w_0 is ignored
      >>> w = jnp.array([1.0, 2.0])
      >>> u, _ = tx.update(jnp.array([0.1, 0.2]), tx.init(w), w)
      >>> optax.apply_updates(w, u)
      Array([-0.9045341, -1.6035676], dtype=float32)
    """
    caller = "tf1_adagrad_da"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(
        caller,
        "initial_gradient_squared_accumulator_value",
        initial_gradient_squared_accumulator_value,
        positive=True,
    )
    checks.check_number(caller, "l1_regularization_strength", l1_regularization_strength)
    checks.check_number(caller, "l2_regularization_strength", l2_regularization_strength)
    nonfinite_policy.check(caller, nonfinite)
    return adagrad_da(
        learning_rate,
        initial_gradient_squared_accumulator_value,
        l1=l1_regularization_strength,
        l2=l2_regularization_strength,
        eps=0.0,
        warm_start=False,
        nonfinite=nonfinite,
    )


@checks.checked_arguments
@shared_args
def keras_ftrl(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    learning_rate_power: jax.typing.ArrayLike = -0.5,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    l1_regularization_strength: jax.typing.ArrayLike = 0.0,
    l2_regularization_strength: jax.typing.ArrayLike = 0.0,
    l2_shrinkage_regularization_strength: jax.typing.ArrayLike = 0.0,
    beta: jax.typing.ArrayLike = 0.0,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """`keras.optimizers.Ftrl` (Keras 3; tf.keras and TF's ApplyFtrlV2 alike), same names.

    With p = -learning_rate_power, l1, l2, s the three strengths, at every
    step::

        g'      = g + 2 * s * w
        n_new   = n + g^2                               n_0 = initial_accumulator_value
        z      += g' - (n_new^p - n^p) / lr * w         z_0 = 0
        q       = n_new^p / lr + 2 * l2 + beta / lr
        w       = (clip(z, -l1, l1) - z) / q
        n       = n_new

    which is ``adagrad_jax.ftrl(learning_rate, learning_rate_power=...,
    initial_accumulator_value=..., l1=l1, l2=2 * l2, l2_shrinkage=2 * s,
    beta=beta, warm_start=False)``: Keras' L2 strengths multiply w^2 where
    ours (the paper's) multiply w^2 / 2.

    Args:
      learning_rate: > 0, or an optax schedule. Default 0.001.
      learning_rate_power: <= 0. Default -0.5.
      {initial_accumulator_value}
        Here that sum is n (n_0 = tau). Must be >= 0. Default 0.1.
      l1_regularization_strength: l1 (>= 0). Default 0.
      l2_regularization_strength: Keras' l2 (>= 0). Default 0.
      l2_shrinkage_regularization_strength: Keras' s (>= 0). Default 0.
      beta: (>= 0). Default 0.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` (an `ftrl`).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adagrad_jax.compat import keras_ftrl
      >>> tx = keras_ftrl(learning_rate=1.0, initial_accumulator_value=0.0)
      >>> w = jnp.array([5.0])      # z_0 = 0: the first step forgets w_0 = 5
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(w), w)
      >>> optax.apply_updates(w, u)      # (0 - (2 - 2 * 5)) / 2
      Array([4.], dtype=float32)

    Not reproduced: Keras' clipnorm / clipvalue / use_ema options (chain
    optax transforms instead).
    """
    caller = "keras_ftrl"
    checks.check_number(caller, "learning_rate", learning_rate, positive=True, allow_schedule=True)
    checks.check_number(caller, "initial_accumulator_value", initial_accumulator_value)
    for arg, value in (
        ("l1_regularization_strength", l1_regularization_strength),
        ("l2_regularization_strength", l2_regularization_strength),
        ("l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength),
        ("beta", beta),
    ):
        checks.check_number(caller, arg, value)
    nonfinite_policy.check(caller, nonfinite)
    return ftrl(
        learning_rate,
        learning_rate_power=learning_rate_power,
        initial_accumulator_value=initial_accumulator_value,
        l1=l1_regularization_strength,
        l2=2 * l2_regularization_strength,
        l2_shrinkage=2 * l2_shrinkage_regularization_strength,
        beta=beta,
        warm_start=False,
        nonfinite=nonfinite,
    )
