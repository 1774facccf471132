"""Presets of diagonal Adagrad with PyTorch's, Keras' and TF1's names, defaults and numbers."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adagrad_jax._src import schedules
from adagrad_jax._src.core import checks, nonfinite_policy, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.diagonal.adagrad import AdagradHyperparameters, adagrad_preconditioner
from adagrad_jax._src.diagonal.weight_decay import coupled_weight_decay


@checks.checked_arguments
@shared_args
def torch_adagrad(
    lr: optax.ScalarOrSchedule = 0.01,
    lr_decay: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike | None = None,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-10,
    maximize: bool = False,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """`torch.optim.Adagrad`, with its argument names and defaults.

    At step t = 1, 2, ...::

        g     = -grad if maximize else grad
        g     = g + weight_decay * w
        clr   = lr / (1 + (t - 1) * lr_decay)
        G_t   = G_{t-1} + g^2                 G_0 = initial_accumulator_value
        w    -= clr * g / (sqrt(G_t) + eps)

    Args:
      lr: learning rate (>= 0) or an optax schedule. Default 0.01.
      lr_decay: inverse time decay of `lr` (>= 0). Default 0. Only with a
        constant `lr`.
      weight_decay: coupled L2 coefficient (>= 0), or None. Default None,
        which is PyTorch's 0 (None keeps the decay out of the chain under
        `optax.inject_hyperparams`, so `update` needs no `params`).
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      eps: added outside the square root (>= 0). Default 1e-10.
      maximize: ascend instead of descend. Default False.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError, TypeError: as `adagrad_jax.scale_by_adagrad` (hyperparameters
        checked at construction, gradients at trace time), naming
        ``torch_adagrad``; also for an `lr_decay` with a schedule `lr`, or a
        non-bool `maximize`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adagrad_jax.compat import torch_adagrad
      >>> tx = torch_adagrad(lr=0.5)
      >>> w = jnp.array([1.0])
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.array([2.0]), state, w)
      >>> optax.apply_updates(w, u)      # 1 - 0.5 * 2 / (2 + 1e-10)
      Array([0.5], dtype=float32)

    Differences from PyTorch: complex parameters accumulate |g|^2 in one real
    accumulator here, while PyTorch views them as pairs of reals with an
    accumulator per component. PyTorch's `foreach`, `fused` and
    `differentiable` flags choose kernels, not numbers, and are not taken.
    """
    caller = "torch_adagrad"
    checks.check_number(caller, "lr", lr, allow_schedule=True)
    checks.check_number(caller, "lr_decay", lr_decay)
    if weight_decay is not None:
        checks.check_number(caller, "weight_decay", weight_decay)
    checks.check_number(caller, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(caller, "eps", eps)
    maximize = checks.check_bool(caller, "maximize", maximize)
    nonfinite_policy.check(caller, nonfinite)
    if checks.is_zero_constant(lr_decay):
        learning_rate = lr
    elif callable(lr):
        raise ValueError(
            f"{caller}(lr_decay={lr_decay!r}): lr_decay needs a constant lr; fold the"
            " decay into the schedule passed as lr instead."
        )
    else:
        learning_rate = schedules.inverse_time_decay(lr, lr_decay)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _negate(caller) if maximize else optax.identity(),
            coupled_weight_decay(weight_decay, caller),
            _preconditioner(
                caller,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                eps_root=0.0,
                nonfinite=nonfinite,
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=True,
    )


@checks.checked_arguments
@shared_args
def keras_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    epsilon: jax.typing.ArrayLike = 1e-7,
    weight_decay: jax.typing.ArrayLike | None = None,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """`keras.optimizers.Adagrad` (Keras 3, tf.keras >= 2.11), same names and defaults.

    At iteration t = 0, 1, ...::

        w     = w - lr_t * weight_decay * w          (decoupled, before the step)
        G_t   = G_{t-1} + g^2                        G_0 = initial_accumulator_value
        w     = w - lr_t * g / sqrt(G_t + epsilon)   (epsilon inside the root)

    Both lines use the parameter value from before the step, so the chain is
    ``u = -lr_t * (g / sqrt(G_t + epsilon) + weight_decay * w)``.

    Args:
      learning_rate: >= 0, or an optax schedule of the iteration count (a Keras
        LearningRateSchedule of `iterations` maps one to one). Default 0.001.
      {initial_accumulator_value}
        Must be >= 0. Default 0.1.
      epsilon: added inside the square root (>= 0). Default 1e-7.
      weight_decay: decoupled decay coefficient, or None for none. Default None.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError, TypeError: as `adagrad_jax.scale_by_adagrad` (hyperparameters
        checked at construction, gradients at trace time), naming
        ``keras_adagrad``.

    Example:
      >>> import jax.numpy as jnp
      >>> from adagrad_jax.compat import keras_adagrad
      >>> tx = keras_adagrad(learning_rate=1.0, epsilon=0.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.array([0.3]), state)
      >>> u                         # -0.3 / sqrt(0.1 + 0.09)
      Array([-0.6882472], dtype=float32)

    Not reproduced: Keras' clipnorm / clipvalue / use_ema options (chain
    `optax.clip_by_global_norm` etc. instead) and `exclude_from_weight_decay`
    (use `optax.masked`).
    """
    caller = "keras_adagrad"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(caller, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(caller, "epsilon", epsilon)
    if weight_decay is not None:
        checks.check_number(caller, "weight_decay", weight_decay)
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _preconditioner(
                caller,
                initial_accumulator_value=initial_accumulator_value,
                eps=0.0,
                eps_root=epsilon,
                nonfinite=nonfinite,
            ),
            # Decoupled: added after the preconditioner, so it is lr * wd * w.
            coupled_weight_decay(weight_decay, caller),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=True,
    )


@checks.checked_arguments
@shared_args
def tf1_adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    *,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """TF1's `tf.compat.v1.train.AdagradOptimizer`: no epsilon at all.

    At step t = 1, 2, ...::

        G_t = G_{t-1} + g^2                  G_0 = initial_accumulator_value > 0
        w  -= learning_rate * g / sqrt(G_t)

    Args:
      learning_rate: required, >= 0, or an optax schedule.
      {initial_accumulator_value}
        Must be > 0, as in TF1 (it is the only guard against division by
        zero). Default 0.1.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Raises:
      ValueError, TypeError: as `adagrad_jax.scale_by_adagrad` (hyperparameters
        checked at construction, gradients at trace time), naming
        ``tf1_adagrad``; also for ``initial_accumulator_value <= 0``. A tau
        too small for the accumulator's dtype (1e-40 in float32) is accepted:
        the update's zero guard then keeps zero gradients at a zero step.

    Example:
      >>> import jax.numpy as jnp
      >>> from adagrad_jax.compat import tf1_adagrad
      >>> tx = tf1_adagrad(learning_rate=1.0, initial_accumulator_value=16.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> tx.update(jnp.array([3.0]), state)[0]     # -3 / sqrt(16 + 9)
      Array([-0.6], dtype=float32)
    """
    caller = "tf1_adagrad"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(
        caller, "initial_accumulator_value", initial_accumulator_value, positive=True
    )
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _preconditioner(
                caller,
                initial_accumulator_value=initial_accumulator_value,
                eps=0.0,
                eps_root=0.0,
                nonfinite=nonfinite,
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=True,
    )


def _preconditioner(
    caller: str,
    *,
    initial_accumulator_value: Any,
    eps: Any,
    eps_root: Any,
    nonfinite: str,
) -> optax.GradientTransformation:
    """`scale_by_adagrad(initial_accumulator_value, eps, eps_root=eps_root)` from values the
    preset checked (table flags at their defaults); trace-time errors name `caller`."""
    return adagrad_preconditioner(
        caller,
        AdagradHyperparameters(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            eps_root=eps_root,
            accumulator_dtype=None,
            row_wise=False,
            pad_id=None,
            out_of_range="drop",
            unique_rows=None,
            nonfinite=nonfinite,
        ),
    )


def _negate(caller: str) -> optax.GradientTransformation:
    """`optax.scale(-1.0)` that first refuses integer gradients.

    Negating an integer gradient with a Python float would promote it to
    float32 and hide it from the checks further down the chain.
    """
    negate = optax.scale(-1.0)

    def update_fn(updates, state, params=None):
        trees.check_inexact_leaves(caller, "updates", updates)
        return negate.update(updates, state, params)

    return optax.GradientTransformation(negate.init, update_fn)
