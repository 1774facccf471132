"""The registry of optimizers that the conformance suite is applied to.

Every optimizer this package ships gets one or more `Spec`s here. Tests read
the capability flags instead of branching on names, so adding an optimizer
means adding a spec, never editing a skip list.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import optax

import adagrad_jax
from adagrad_jax import compat, schedules
from tests import reference


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to build one optimizer and what it must do.

    Attributes:
      name: test id.
      make: factory returning an `optax.GradientTransformation`.
      hyperparams: keyword arguments for `make`; numeric ones are injected as
        arrays by `optax.inject_hyperparams` in the conformance suite.
      reference: NumPy step `(w, g, acc, t) -> (w, acc, u)` with the same
        hyperparameters bound, from `tests/reference.py`.
      tau: the accumulator's starting value, for the reference.
      converge: hyperparameters that minimise the test problems, or None for
        a transform that does not descend (a bare preconditioner).
      complex_params: whether the documented rule covers complex parameters.
      uses_params: whether `update` needs `params` (weight decay).
    """

    name: str
    make: Callable[..., optax.GradientTransformation]
    hyperparams: dict[str, Any]
    reference: Callable[..., Any]
    tau: float
    converge: dict[str, Any] | None
    complex_params: bool = True
    uses_params: bool = False

    def build(self, **overrides) -> optax.GradientTransformation:
        return self.make(**{**self.hyperparams, **overrides})


def _ref(step, **hyper):
    return functools.partial(step, **hyper)


SPECS = [
    Spec(
        name="adagrad-defaults",
        make=adagrad_jax.adagrad,
        hyperparams={},
        reference=_ref(reference.adagrad_step, lr=0.01, eps=1e-8),
        tau=0.0,
        converge={"learning_rate": 0.5},
    ),
    Spec(
        name="adagrad-all-options",
        make=adagrad_jax.adagrad,
        hyperparams=dict(learning_rate=0.05, initial_accumulator_value=0.3, eps=1e-3,
                         eps_root=0.2, weight_decay=0.01),
        reference=_ref(reference.adagrad_step, lr=0.05, eps=1e-3, eps_root=0.2,
                       weight_decay=0.01),
        tau=0.3,
        converge={"learning_rate": 0.5, "weight_decay": 0.0},
        uses_params=True,
    ),
    Spec(
        name="adagrad-schedule",
        make=adagrad_jax.adagrad,
        hyperparams=dict(learning_rate=schedules.inverse_time_decay(0.1, 0.5), eps=0.0),
        reference=_ref(reference.adagrad_step, lr=lambda c: 0.1 / (1 + 0.5 * c), eps=0.0),
        tau=0.0,
        converge={"learning_rate": schedules.inverse_time_decay(0.5, 1e-4)},
    ),
    Spec(
        name="sparse_adagrad-dense-leaves",
        make=adagrad_jax.sparse_adagrad,
        hyperparams=dict(learning_rate=0.05, initial_accumulator_value=0.2, eps=1e-6,
                         eps_root=0.1),
        reference=_ref(reference.adagrad_step, lr=0.05, eps=1e-6, eps_root=0.1),
        tau=0.2,
        converge={"learning_rate": 0.5},
    ),
    Spec(
        name="scale_by_adagrad",
        make=adagrad_jax.scale_by_adagrad,
        hyperparams=dict(initial_accumulator_value=0.1, eps=1e-6),
        reference=_ref(reference.adagrad_step, lr=-1.0, eps=1e-6),
        tau=0.1,
        converge=None,
    ),
    Spec(
        name="compat.torch_adagrad",
        make=compat.torch_adagrad,
        hyperparams=dict(lr=0.1, lr_decay=0.01, weight_decay=0.01,
                         initial_accumulator_value=0.1),
        reference=_ref(reference.torch_step, lr=0.1, lr_decay=0.01, weight_decay=0.01),
        tau=0.1,
        converge={"lr": 0.5, "lr_decay": 0.0, "weight_decay": 0.0},
        complex_params=False,
        uses_params=True,
    ),
    Spec(
        name="compat.keras_adagrad",
        make=compat.keras_adagrad,
        hyperparams=dict(learning_rate=0.1, initial_accumulator_value=0.1, epsilon=1e-7,
                         weight_decay=0.004),
        reference=_ref(reference.keras3_step, lr=0.1, epsilon=1e-7, weight_decay=0.004),
        tau=0.1,
        converge={"learning_rate": 0.5, "weight_decay": None},
        complex_params=False,
        uses_params=True,
    ),
    Spec(
        name="compat.tf1_adagrad",
        make=compat.tf1_adagrad,
        hyperparams=dict(learning_rate=0.1, initial_accumulator_value=0.1),
        reference=_ref(reference.tf1_step, lr=0.1),
        tau=0.1,
        converge={"learning_rate": 0.5},
        complex_params=False,
    ),
]

DESCENDING = [s for s in SPECS if s.converge is not None]
