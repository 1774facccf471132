"""A registry of bad inputs to every public constructor and function (issue 11).

In the style of PyTorch's ``optim_error_inputs_func``: each `Bad` names a call
that must fail, the error type, and the words its message must contain: the
function's name, the argument (or the leaf path) and the value. Calls that get
a state or parameters also check that those did not change. Update-time cases
run twice: under the strict promotion of `conftest.py` and under JAX's
defaults, which users run and which hide broadcasting and integer truncation.
"""

from __future__ import annotations

import dataclasses
import fractions
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse, compat, schedules


@dataclasses.dataclass(frozen=True)
class Bad:
    """One bad input: ``call()`` must raise `error` with every string of `words`."""

    id: str
    call: Callable[[], Any]
    error: type[Exception]
    words: tuple[str, ...]
    state: Callable[[], Any] | None = None  # what must stay unchanged (params, state)


def shown(value: Any) -> str:
    """How a message shows `value`: ``Array(-0.1)`` for a concrete JAX array, else repr."""
    if isinstance(value, jax.Array):
        return f"Array({value!s})"
    return repr(value)


# --- hyperparameters ---------------------------------------------------------------

# (label, value, error) for a real scalar hyperparameter that must be >= 0.
BAD_NUMBERS = [
    ("negative", -0.1, ValueError),
    ("nan", float("nan"), ValueError),
    ("inf", float("inf"), ValueError),
    ("-inf", -float("inf"), ValueError),
    ("too-big-for-float32", 1e39, ValueError),
    ("str", "0.1", TypeError),
    ("bool", True, TypeError),
    ("none", None, TypeError),
    ("complex", 1 + 2j, TypeError),
    ("np-negative", np.float32(-1.0), ValueError),
    ("np-nan", np.float64("nan"), ValueError),
    ("np-vector", np.array([0.1]), ValueError),
    ("np-longdouble", np.longdouble(0.1), TypeError),
    ("np-complex", np.complex64(1), TypeError),
    ("jax-negative", jnp.array(-0.1), ValueError),
    ("jax-vector", jnp.array([0.1]), ValueError),
    ("jax-complex", jnp.array(0.1 + 0j), TypeError),
    ("jax-bool", jnp.array(True), TypeError),
    ("fraction", fractions.Fraction(1, 10), TypeError),
    ("list", [0.1], TypeError),
    ("callable", lambda: 0.1, TypeError),
]
# Learning rates take schedules, so a 0-argument callable fails for a different reason.
BAD_RATES = [b for b in BAD_NUMBERS if b[0] != "callable"] + [
    ("0-arg-callable", lambda: 0.1, TypeError),
]

# constructor -> its real-scalar hyperparameters (all >= 0 unless listed in POSITIVE).
NUMERIC = {
    adagrad_jax.adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "eps",
        "eps_root",
        "weight_decay",
    ],
    adagrad_jax.sparse_adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "eps",
        "eps_root",
        "weight_decay",
    ],
    adagrad_jax.scale_by_adagrad: ["initial_accumulator_value", "eps", "eps_root"],
    adagrad_jax.scale_by_sparse_adagrad: ["initial_accumulator_value", "eps", "eps_root"],
    adagrad_jax.proximal_adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "eps",
        "l1",
        "l2",
        "eps_root",
    ],
    adagrad_jax.adagrad_da: ["learning_rate", "initial_accumulator_value", "l1", "l2", "eps"],
    adagrad_jax.ftrl: [
        "learning_rate",
        "initial_accumulator_value",
        "l1",
        "l2",
        "l2_shrinkage",
        "beta",
    ],
    adagrad_jax.full_matrix_adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "eps",
        "eps_root",
    ],
    adagrad_jax.scale_by_full_matrix_adagrad: ["initial_accumulator_value", "eps", "eps_root"],
    adagrad_jax.shampoo: ["learning_rate", "eps"],
    adagrad_jax.scale_by_shampoo: ["eps"],
    adagrad_jax.adagrad_norm: ["learning_rate", "initial_accumulator_value", "eps"],
    adagrad_jax.scale_by_adagrad_norm: ["initial_accumulator_value", "eps"],
    adagrad_jax.sm3: ["learning_rate", "momentum", "eps"],
    adagrad_jax.scale_by_sm3: ["momentum", "eps"],
    adagrad_jax.adagrad_momentum: [
        "learning_rate",
        "momentum",
        "beta2",
        "exponent",
        "eps",
        "initial_accumulator_value",
    ],
    adagrad_jax.scale_by_adagrad_momentum: [
        "momentum",
        "beta2",
        "exponent",
        "eps",
        "initial_accumulator_value",
    ],
    compat.torch_adagrad: ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"],
    compat.keras_adagrad: ["learning_rate", "initial_accumulator_value", "epsilon", "weight_decay"],
    compat.tf1_adagrad: ["learning_rate", "initial_accumulator_value"],
    compat.fbgemm_rowwise_adagrad: ["learning_rate", "eps", "weight_decay", "max_norm"],
    compat.fbgemm_exact_adagrad: ["learning_rate", "eps", "weight_decay"],
    compat.tf1_proximal_adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
    ],
    compat.tf1_adagrad_da: [
        "learning_rate",
        "initial_gradient_squared_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
    ],
    compat.keras_ftrl: [
        "learning_rate",
        "initial_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "l2_shrinkage_regularization_strength",
        "beta",
    ],
    schedules.inverse_time_decay: ["init_value", "decay_rate"],
    schedules.inverse_sqrt_decay: ["init_value"],
    adagrad_jax.experimental.packed_adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        "eps",
        "eps_root",
        "weight_decay",
    ],
}
RATE_ARGS = {"learning_rate", "lr"}
OPTIONAL = {"weight_decay"}
REQUIRED = {
    compat.tf1_adagrad: {"learning_rate": 0.1},
    compat.tf1_proximal_adagrad: {"learning_rate": 0.1},
    compat.tf1_adagrad_da: {"learning_rate": 0.1},
    schedules.inverse_time_decay: {"init_value": 0.1, "decay_rate": 0.5},
    schedules.inverse_sqrt_decay: {"init_value": 0.1},
    adagrad_jax.value_and_row_grad: {"fun": jnp.sum},
}


def _name(fn) -> str:
    return fn.__name__


def _hyperparameter_cases() -> list[Bad]:
    cases = []
    for fn, args in NUMERIC.items():
        for i, arg in enumerate(args):
            table = BAD_RATES if arg in RATE_ARGS else BAD_NUMBERS
            # Every bad value for the first argument; a rotating third of them for the
            # others (all values meet every constructor, the run stays short).
            picked = table if i == 0 else table[i % 3 :: 3]
            for label, value, error in picked:
                if label == "none" and arg in OPTIONAL:
                    continue  # None is these arguments' "no decay".
                kwargs = {**REQUIRED.get(fn, {}), arg: value}
                if error is ValueError or label in (
                    "fraction",
                    "np-longdouble",
                    "callable",
                    "0-arg-callable",
                ):
                    words = (f"{_name(fn)}(", f"{arg}=", shown(value))
                else:
                    words = (f"{_name(fn)}(", f"{arg}=")
                cases.append(
                    Bad(
                        f"{_name(fn)}-{arg}-{label}",
                        lambda fn=fn, kwargs=kwargs: fn(**kwargs),
                        error,
                        words,
                    )
                )
    return cases


def _flag_cases() -> list[Bad]:
    """Integers, dtypes, flags and strings, each with the value it was given."""
    c: list[Bad] = []

    def add(fn, error, **kwargs):
        ((arg, value),) = kwargs.items()
        c.append(
            Bad(
                f"{_name(fn)}-{arg}-{value!r}"[:80],
                lambda: fn(**{**REQUIRED.get(fn, {}), **kwargs}),
                error,
                (f"{_name(fn)}(", f"{arg}=", shown(value)),
            )
        )

    for fn in (
        adagrad_jax.adagrad,
        adagrad_jax.sparse_adagrad,
        adagrad_jax.scale_by_adagrad,
        adagrad_jax.proximal_adagrad,
        adagrad_jax.adagrad_da,
        adagrad_jax.ftrl,
        adagrad_jax.adagrad_momentum,
        adagrad_jax.scale_by_adagrad_momentum,
        adagrad_jax.sm3,
        adagrad_jax.scale_by_sm3,
    ):
        add(fn, ValueError, out_of_range="raise")
        add(fn, ValueError, out_of_range=None)
        add(fn, ValueError, pad_id=-1)
        add(fn, TypeError, pad_id=1.7)
        add(fn, TypeError, pad_id=jnp.array(1.7))
        add(fn, ValueError, pad_id=2**31)
        add(fn, ValueError, pad_id=jnp.array([1]))
        add(fn, TypeError, pad_id="0")
        add(fn, TypeError, pad_id=True)
        add(fn, ValueError, unique_rows=0)
        add(fn, ValueError, unique_rows=-3)
        add(fn, ValueError, unique_rows=2**31)
        add(fn, ValueError, unique_rows=jnp.array([4]))
        add(fn, TypeError, unique_rows=2.5)
        add(fn, TypeError, unique_rows=jnp.array(2.0))
        add(fn, TypeError, unique_rows=True)
        add(fn, TypeError, unique_rows="8")
        if "accumulator_dtype" in inspect.signature(fn).parameters:  # not sm3
            add(fn, ValueError, accumulator_dtype=jnp.int32)
            add(fn, ValueError, accumulator_dtype=jnp.float8_e4m3fn)
            add(fn, ValueError, accumulator_dtype=jnp.complex64)
            add(fn, TypeError, accumulator_dtype="not-a-dtype")
    for fn in NUMERIC:
        if "nonfinite" in inspect.signature(fn).parameters:
            add(fn, ValueError, nonfinite="skip")
            add(fn, ValueError, nonfinite=None)
            add(fn, ValueError, nonfinite=True)
    for fn in (adagrad_jax.adagrad, adagrad_jax.sparse_adagrad, adagrad_jax.scale_by_adagrad):
        add(fn, TypeError, row_wise="yes")
        add(fn, TypeError, row_wise=1)
    for fn in (adagrad_jax.adagrad_da, adagrad_jax.ftrl):
        add(fn, TypeError, warm_start=1)
        add(fn, TypeError, warm_start="no")
        add(fn, TypeError, stack_slots=1)
        add(fn, TypeError, stack_slots="no")
        add(fn, TypeError, stack_slots=None)
    # 8-bit sums refused by a flag: row_wise (one number per row already) and
    # stack_slots (both slots in one array of one dtype).
    int8_flags = [
        ("row_wise", "row_wise", (adagrad_jax.adagrad, adagrad_jax.sparse_adagrad,
                                  adagrad_jax.scale_by_adagrad)),
        ("stack_slots", "stack_slots=True", (adagrad_jax.ftrl, adagrad_jax.adagrad_da,
                                             adagrad_jax.adagrad_momentum,
                                             adagrad_jax.scale_by_adagrad_momentum)),
    ]
    for flag, words, fns in int8_flags:
        for fn in fns:
            c.append(
                Bad(
                    f"{_name(fn)}-int8-{flag}",
                    lambda fn=fn, flag=flag: fn(accumulator_dtype="int8", **{flag: True}),
                    ValueError,
                    (f"{_name(fn)}(", "accumulator_dtype='int8'", words),
                )
            )
    c.append(
        Bad(
            "packed_adagrad-int8",
            lambda: adagrad_jax.experimental.packed_adagrad(accumulator_dtype="int8"),
            ValueError,
            ("packed_adagrad(accumulator_dtype='int8')", "adagrad_jax.adagrad(accumulator_dtype"),
        )
    )
    for fn in (adagrad_jax.adagrad, adagrad_jax.proximal_adagrad):
        add(fn, ValueError, accumulator_dtype="int4")
        add(fn, ValueError, accumulator_dtype="uint8")
        add(fn, TypeError, accumulator_dtype="int-8")
    for flag in ("multiply_linear_by_learning_rate", "allow_zero_accumulator"):
        add(adagrad_jax.ftrl, TypeError, **{flag: 1})
        add(adagrad_jax.ftrl, TypeError, **{flag: "yes"})
        add(adagrad_jax.ftrl, TypeError, **{flag: None})
    for fn in (
        adagrad_jax.adagrad,
        adagrad_jax.sparse_adagrad,
        adagrad_jax.proximal_adagrad,
        adagrad_jax.adagrad_da,
        adagrad_jax.ftrl,
    ):
        add(fn, TypeError, stochastic_rounding=1)
        add(fn, TypeError, stochastic_rounding="yes")
        add(fn, TypeError, stochastic_rounding=None)
        add(fn, ValueError, seed=-1)
        add(fn, ValueError, seed=2**32)
        add(fn, TypeError, seed=1.5)
        add(fn, TypeError, seed="0")
        add(fn, TypeError, seed=True)
        add(fn, ValueError, seed=jnp.array([1]))
    for fn in (
        adagrad_jax.full_matrix_adagrad,
        adagrad_jax.scale_by_full_matrix_adagrad,
        adagrad_jax.shampoo,
        adagrad_jax.scale_by_shampoo,
    ):
        for arg in ("block_size", "preconditioner_every"):
            add(fn, ValueError, **{arg: 0})
            add(fn, ValueError, **{arg: -3})
            add(fn, TypeError, **{arg: 2.5})
            add(fn, TypeError, **{arg: True})
            add(fn, TypeError, **{arg: "4"})
            add(fn, ValueError, **{arg: jnp.array([4])})
            add(fn, TypeError, **{arg: jnp.array(4.0)})
    for fn in (adagrad_jax.shampoo, adagrad_jax.scale_by_shampoo):
        add(fn, ValueError, start_preconditioning_step=0)
        add(fn, TypeError, start_preconditioning_step=1.0)
        add(fn, ValueError, graft="adam")
        add(fn, ValueError, graft=3)
    for fn in (adagrad_jax.adagrad_norm, adagrad_jax.scale_by_adagrad_norm):
        add(fn, TypeError, per_leaf="yes")
        add(fn, TypeError, per_leaf=1)
    for fn in (adagrad_jax.sm3, adagrad_jax.scale_by_sm3):
        add(fn, ValueError, momentum=1.0)
        add(fn, ValueError, momentum=1.5)
    for fn in (adagrad_jax.adagrad_momentum, adagrad_jax.scale_by_adagrad_momentum):
        add(fn, ValueError, momentum=1.0)
        add(fn, ValueError, momentum=jnp.array(1.5))
        add(fn, ValueError, beta2=0.0)
        add(fn, ValueError, beta2=1.5)
        add(fn, ValueError, beta2=np.float32(1.01))
        add(fn, ValueError, exponent=0.0)
        add(fn, ValueError, initial_momentum_value=float("nan"))
        add(fn, ValueError, initial_momentum_value=-float("inf"))
        add(fn, ValueError, initial_momentum_value=-1e39)
        add(fn, ValueError, initial_momentum_value=jnp.array([0.1]))
        add(fn, TypeError, initial_momentum_value="0.1")
        add(fn, TypeError, initial_momentum_value=True)
        add(fn, TypeError, initial_momentum_value=fractions.Fraction(-1, 10))
        add(fn, TypeError, initial_momentum_value=jnp.array(1 + 0j))
        add(fn, TypeError, use_nesterov=1)
        add(fn, TypeError, use_nesterov="yes")
        add(fn, TypeError, stack_slots=1)
        add(fn, TypeError, stack_slots=None)
    add(adagrad_jax.adagrad_momentum, TypeError, stochastic_rounding=1)
    add(adagrad_jax.adagrad_momentum, TypeError, stochastic_rounding="yes")
    add(adagrad_jax.adagrad_momentum, ValueError, seed=-1)
    add(adagrad_jax.adagrad_momentum, ValueError, seed=2**32)
    add(adagrad_jax.adagrad_momentum, TypeError, seed=1.5)
    add(adagrad_jax.ftrl, ValueError, learning_rate=0.0)
    add(adagrad_jax.ftrl, ValueError, learning_rate_power=0.5)
    add(adagrad_jax.ftrl, ValueError, learning_rate_power=float("nan"))
    add(adagrad_jax.ftrl, TypeError, learning_rate_power="-0.5")
    add(compat.tf1_adagrad, ValueError, initial_accumulator_value=0.0)
    for fn in (compat.fbgemm_rowwise_adagrad, compat.fbgemm_exact_adagrad):
        for mode in ("counter", "cowclip", "decouple_global", "decouple", "L2", None, 1):
            add(fn, ValueError, weight_decay_mode=mode)
        add(fn, ValueError, out_of_range="raise")
        add(fn, ValueError, pad_id=-1)
        add(fn, TypeError, pad_id=1.7)
        add(fn, ValueError, unique_rows=0)
        add(fn, TypeError, unique_rows=2.5)
        add(fn, TypeError, stochastic_rounding="yes")
        add(fn, TypeError, stochastic_rounding=1)
        add(fn, ValueError, seed=-1)
        add(fn, ValueError, seed=2**32)
        add(fn, TypeError, seed=1.5)
    add(compat.torch_adagrad, TypeError, maximize="yes")
    add(compat.torch_adagrad, ValueError, lr_decay=-1.0)
    add(adagrad_jax.value_and_row_grad, TypeError, fun=3)
    add(adagrad_jax.value_and_row_grad, TypeError, has_aux="no")
    c.append(
        Bad(
            "value_and_row_grad-pad_id--2",
            lambda: adagrad_jax.value_and_row_grad(jnp.sum, pad_id=-2),
            ValueError,
            ("value_and_row_grad(", "pad_id=", "-2"),
        )
    )
    c.append(
        Bad(
            "value_and_row_grad-pad_id-float",
            lambda: adagrad_jax.value_and_row_grad(jnp.sum, pad_id=0.5),
            TypeError,
            ("value_and_row_grad(", "pad_id=", "0.5"),
        )
    )
    c.append(
        Bad(
            "adagrad-unknown-keyword-lr",
            lambda: adagrad_jax.adagrad(lr=0.1),
            TypeError,
            ("adagrad(", "lr=0.1", "Did you mean 'learning_rate'"),
        )
    )
    c.append(
        Bad(
            "ftrl-unknown-keyword-epsilon",
            lambda: adagrad_jax.ftrl(epsilon=0.1),
            TypeError,
            ("ftrl(", "epsilon=0.1", "unknown argument"),
        )
    )
    mesh = jax.make_mesh((1,), ("data",))
    c.append(
        Bad(
            "propose_placement-replicate_below_bytes-negative",
            lambda: adagrad_jax.propose_placement(
                {"t": jnp.zeros((4, 2))}, mesh, replicate_below_bytes=-1
            ),
            ValueError,
            ("propose_placement(", "replicate_below_bytes=", "-1"),
        )
    )
    c.append(
        Bad(
            "propose_placement-replicate_below_bytes-float",
            lambda: adagrad_jax.propose_placement(
                {"t": jnp.zeros((4, 2))}, mesh, replicate_below_bytes=1.5
            ),
            TypeError,
            ("propose_placement(", "replicate_below_bytes=", "1.5"),
        )
    )
    c.append(
        Bad(
            "propose_placement-axis-unknown",
            lambda: adagrad_jax.propose_placement({"t": jnp.zeros((4, 2))}, mesh, axis="model"),
            ValueError,
            ("propose_placement", "axis=", "'model'"),
        )
    )
    c.append(
        Bad(
            "state_shardings-tx-not-a-transform",
            lambda: adagrad_jax.state_shardings(optax.adam, {"t": jnp.zeros(2)}),
            TypeError,
            ("state_shardings(", "tx=", "adam"),
        )
    )
    return c


# --- RowSparse ----------------------------------------------------------------------


def _row_sparse_cases() -> list[Bad]:
    c = [
        Bad(
            "RowSparse-float-ids",
            lambda: RowSparse(jnp.array([0.0, 1.0]), jnp.ones((2, 2))),
            TypeError,
            ("RowSparse(", "indices=", "float32[2]"),
        ),
        Bad(
            "RowSparse-2d-ids",
            lambda: RowSparse(jnp.zeros((2, 2), jnp.int32), jnp.ones((4, 2))),
            ValueError,
            ("RowSparse(", "indices=", "int32[2,2]"),
        ),
        Bad(
            "RowSparse-int-values",
            lambda: RowSparse(jnp.array([0]), jnp.ones((1, 2), jnp.int32)),
            TypeError,
            ("RowSparse(", "values=", "int32[1,2]"),
        ),
        Bad(
            "RowSparse-bool-values",
            lambda: RowSparse(jnp.array([0]), jnp.ones((1,), bool)),
            TypeError,
            ("RowSparse(", "values=", "bool[1]"),
        ),
        Bad(
            "RowSparse-row-count",
            lambda: RowSparse(jnp.array([0, 1, 2]), jnp.ones((2, 4))),
            ValueError,
            ("RowSparse(", "values=", "float32[2,4]", "(3, ...)"),
        ),
        Bad(
            "RowSparse-scalar-values",
            lambda: RowSparse(jnp.array([0]), jnp.float32(1.0)),
            ValueError,
            ("RowSparse(", "values=", "float32[]"),
        ),
        Bad(
            "RowSparse-astype-int",
            lambda: RowSparse(jnp.array([0]), jnp.ones((1, 2))).astype(jnp.int32),
            TypeError,
            ("RowSparse.astype(", "dtype=", "int32"),
        ),
        Bad(
            "RowSparse-setattr",
            lambda: setattr(RowSparse(jnp.array([0]), jnp.ones((1, 2))), "values", 1),
            AttributeError,
            ("RowSparse is immutable", "'values'"),
        ),
        Bad(
            "RowSparse-arithmetic",
            lambda: RowSparse(jnp.array([0]), jnp.ones((1, 2))) * 2.0,
            TypeError,
            ("adagrad_jax.RowSparse does not support arithmetic", "apply_updates"),
        ),
        Bad(
            "on_row_values-adam",
            lambda: adagrad_jax.on_row_values(optax.adam(0.1)).init({"t": jnp.zeros((3, 2))}),
            ValueError,
            ("on_row_values(inner)", "state", "shape"),
        ),
    ]
    return c


# --- update-time: trees, shapes, dtypes, RowSparse against tables ------------------------


def _params():
    return {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}


OPTIMIZERS = {
    "adagrad": lambda: adagrad_jax.adagrad(0.1),
    "adagrad-row_wise": lambda: adagrad_jax.adagrad(0.1, row_wise=True),
    "adagrad-skip_step": lambda: adagrad_jax.adagrad(0.1, nonfinite="skip_step"),
    "proximal_adagrad": lambda: adagrad_jax.proximal_adagrad(0.1, l1=0.01),
    "adagrad_da": lambda: adagrad_jax.adagrad_da(0.1),
    "ftrl": lambda: adagrad_jax.ftrl(0.1),
    "full_matrix_adagrad": lambda: adagrad_jax.full_matrix_adagrad(0.1, block_size=4),
    "shampoo": lambda: adagrad_jax.shampoo(0.1, block_size=4),
    "adagrad_norm": lambda: adagrad_jax.adagrad_norm(0.1),
    "sm3": lambda: adagrad_jax.sm3(0.1),
    "sm3-momentum": lambda: adagrad_jax.sm3(0.1, 0.9),
    "adagrad_momentum": lambda: adagrad_jax.adagrad_momentum(0.1),
    "adagrad_momentum-stacked": lambda: adagrad_jax.adagrad_momentum(0.1, stack_slots=True),
    "compat.torch_adagrad": lambda: compat.torch_adagrad(0.1, weight_decay=0.01),
    "compat.keras_ftrl": lambda: compat.keras_ftrl(0.1),
    "compat.fbgemm_rowwise_adagrad": lambda: compat.fbgemm_rowwise_adagrad(
        0.1, weight_decay=0.01, weight_decay_mode="l2", max_norm=1.0
    ),
    "compat.fbgemm_exact_adagrad": lambda: compat.fbgemm_exact_adagrad(
        0.1, weight_decay=0.01, weight_decay_mode="decoupled"
    ),
}
FN_NAME = {
    "compat.torch_adagrad": "torch_adagrad",
    "compat.keras_ftrl": "ftrl",
    "adagrad-row_wise": "adagrad",
    "adagrad-skip_step": "adagrad",
    "sm3-momentum": "sm3",
    "compat.fbgemm_rowwise_adagrad": "fbgemm_rowwise_adagrad",
    "compat.fbgemm_exact_adagrad": "fbgemm_exact_adagrad",
    "adagrad_momentum-stacked": "adagrad_momentum",
}


def _update_cases() -> list[Bad]:
    c = []
    bad_grads = {
        # label: (gradient tree, error, words beyond the function's name)
        "missing-leaf": ({"w": jnp.ones((3, 4))}, ValueError, ("updates", "['b']")),
        "extra-leaf": (
            {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "c": jnp.ones(2)},
            ValueError,
            ("updates", "['c']"),
        ),
        "transposed": (
            {"w": jnp.ones((4, 3)), "b": jnp.ones(4)},
            ValueError,
            ("updates['w']", "(4, 3)", "(3, 4)"),
        ),
        "broadcast": (
            {"w": jnp.ones((3, 4)), "b": jnp.ones(1)},
            ValueError,
            ("updates['b']", "(1,)", "(4,)"),
        ),
        "scalar-for-vector": (
            {"w": jnp.ones((3, 4)), "b": jnp.ones(())},
            ValueError,
            ("updates['b']", "()", "(4,)"),
        ),
        "int-gradient": (
            {"w": jnp.ones((3, 4)), "b": jnp.ones(4, jnp.int32)},
            TypeError,
            ("updates['b']", "int32"),
        ),
        "bool-gradient": (
            {"w": jnp.ones((3, 4), bool), "b": jnp.ones(4)},
            TypeError,
            ("updates['w']", "bool"),
        ),
    }
    for name, make in OPTIMIZERS.items():
        fn = FN_NAME.get(name, name)
        for label, (grads, error, words) in bad_grads.items():
            box: dict[str, Any] = {}

            def call(make=make, grads=grads, box=box):
                tx = make()
                params = _params()
                state = tx.init(params)
                box["before"] = jax.tree.map(np.array, (params, state))
                box["after"] = (params, state)
                tx.update(grads, state, params)

            c.append(
                Bad(f"{name}.update-{label}", call, error, (fn, *words), state=lambda box=box: box)
            )
    # RowSparse against tables.
    table = {"t": jnp.ones((5, 3)), "s": jnp.ones(())}
    rs_cases = {
        "row-width": (
            {"t": RowSparse(jnp.array([1]), jnp.ones((1, 4))), "s": jnp.ones(())},
            ValueError,
            ("updates['t']", "float32[1,4]", "(3,)"),
        ),
        "scalar-table": (
            {"t": jnp.ones((5, 3)), "s": RowSparse(jnp.array([0]), jnp.ones(1))},
            ValueError,
            ("updates['s']", "scalar"),
        ),
        "int-values": (
            {
                "t": RowSparse.tree_unflatten(
                    None,
                    (
                        RowSparse(jnp.array([0]), jnp.ones((1, 3)))._guard,
                        jnp.array([0]),
                        jnp.ones((1, 3), jnp.int32),
                    ),
                ),
                "s": jnp.ones(()),
            },
            TypeError,
            ("updates['t']", "int32"),
        ),
    }
    for name in ("adagrad", "proximal_adagrad", "adagrad_da", "ftrl", "adagrad_momentum"):
        for label, (grads, error, words) in rs_cases.items():
            box = {}

            def call(name=name, grads=grads, box=box):
                tx = OPTIMIZERS[name]()
                state = tx.init(table)
                box["before"] = jax.tree.map(np.array, (table, state))
                box["after"] = (table, state)
                tx.update(grads, state, table)

            c.append(
                Bad(
                    f"{name}.update-rowsparse-{label}",
                    call,
                    error,
                    (name, *words),
                    state=lambda box=box: box,
                )
            )
    c.append(
        Bad(
            "apply_updates-row-width",
            lambda: adagrad_jax.apply_updates(
                table, {"t": RowSparse(jnp.array([1]), jnp.ones((1, 2))), "s": jnp.zeros(())}
            ),
            ValueError,
            ("apply_updates", "updates['t']", "float32[1,2]", "(3,)"),
        )
    )
    c.append(
        Bad(
            "apply_updates-tree",
            lambda: adagrad_jax.apply_updates(table, {"t": jnp.zeros((5, 3))}),
            ValueError,
            ("apply_updates", "updates", "['s']"),
        )
    )
    c.append(
        Bad(
            "value_and_row_grad-float-ids",
            lambda: adagrad_jax.value_and_row_grad(lambda r: jnp.sum(r["t"]))(
                table, {"t": jnp.array([0.0]), "s": None}
            ),
            TypeError,
            ("value_and_row_grad", "ids['t']", "float32[1]"),
        )
    )
    c.append(
        Bad(
            "value_and_row_grad-ids-for-scalar",
            lambda: adagrad_jax.value_and_row_grad(lambda r: jnp.sum(r["t"]))(
                table, {"t": None, "s": jnp.array([0])}
            ),
            ValueError,
            ("value_and_row_grad", "ids['s']", "params['s']"),
        )
    )
    c.append(
        Bad(
            "adagrad-row_wise-no-params",
            lambda: (
                lambda tx: tx.update(
                    {"t": RowSparse(jnp.array([1]), jnp.ones((1, 7))), "s": jnp.ones(())},
                    tx.init(table),
                )
            )(adagrad_jax.adagrad(0.1, row_wise=True)),
            ValueError,
            ("adagrad(row_wise=True)", "needs params"),
        )
    )
    c.append(
        Bad(
            "adagrad-skip_step-foreign-state",
            lambda: adagrad_jax.adagrad(0.1, nonfinite="skip_step").update(
                table, adagrad_jax.adagrad(0.1).init(table), table
            ),
            TypeError,
            ("adagrad(nonfinite='skip_step')", "tuple", "NonfiniteState"),
        )
    )
    c.append(
        Bad(
            "adagrad-out_of_range-error",
            lambda: (
                lambda tx: tx.update(
                    {"t": RowSparse(jnp.array([0, 7]), jnp.ones((2, 3))), "s": jnp.ones(())},
                    tx.init(table),
                    table,
                )
            )(adagrad_jax.adagrad(0.1, out_of_range="error")),
            ValueError,
            ("adagrad(out_of_range='error')", "updates['t']", "row id 7", "position 1"),
        )
    )
    c.append(
        Bad(
            "adagrad-unique_rows-overflow",
            lambda: (
                lambda tx: tx.update(
                    {
                        "t": RowSparse(jnp.array([0, 4, 2, 4, 1]), jnp.ones((5, 3))),
                        "s": jnp.ones(()),
                    },
                    tx.init(table),
                    table,
                )
            )(adagrad_jax.adagrad(0.1, unique_rows=3)),
            ValueError,
            ("adagrad(unique_rows=3)", "updates['t']", "4 distinct row ids", "no row was updated"),
        )
    )
    c.append(
        Bad(
            "adagrad-init-int-params",
            lambda: adagrad_jax.adagrad(0.1).init({"w": jnp.ones(2, jnp.int32)}),
            TypeError,
            ("adagrad", "['w']", "int32"),
        )
    )
    c.append(
        Bad(
            "ftrl-init-complex-params",
            lambda: adagrad_jax.ftrl(0.1).init({"w": jnp.ones(2, jnp.complex64)}),
            TypeError,
            ("ftrl", "['w']", "complex64"),
        )
    )
    c.append(
        Bad(
            "adagrad_momentum-init-complex-params",
            lambda: adagrad_jax.adagrad_momentum().init({"w": jnp.ones(2, jnp.complex64)}),
            TypeError,
            ("adagrad_momentum", "['w']", "complex64"),
        )
    )
    c.append(
        Bad(
            "shampoo-init-complex-params",
            lambda: adagrad_jax.shampoo(0.1).init({"w": jnp.ones((2, 2), jnp.complex64)}),
            TypeError,
            ("shampoo", "['w']", "complex64"),
        )
    )
    for fn in (compat.fbgemm_rowwise_adagrad, compat.fbgemm_exact_adagrad):
        name = fn.__name__
        c.append(
            Bad(
                f"{name}-update-without-params",
                lambda fn=fn: (lambda tx: tx.update(table, tx.init(table)))(fn(0.1)),
                ValueError,
                (name, "needs params"),
            )
        )
        c.append(
            Bad(
                f"{name}-init-complex-params",
                lambda fn=fn: fn(0.1).init({"w": jnp.ones(2, jnp.complex64)}),
                TypeError,
                (name, "['w']", "complex64"),
            )
        )
        c.append(
            Bad(
                f"{name}.update-rowsparse-row-width",
                lambda fn=fn: (
                    lambda tx: tx.update(
                        {"t": RowSparse(jnp.array([1]), jnp.ones((1, 4))), "s": jnp.ones(())},
                        tx.init(table),
                        table,
                    )
                )(fn(0.1)),
                ValueError,
                (name, "updates['t']", "(3,)"),
            )
        )
    c.append(
        Bad(
            "proximal_adagrad-update-without-params",
            lambda: (lambda tx: tx.update(table, tx.init(table)))(
                adagrad_jax.proximal_adagrad(0.1, l1=0.1)
            ),
            ValueError,
            ("proximal_adagrad", "needs params"),
        )
    )
    return c


CONSTRUCTION = _hyperparameter_cases() + _flag_cases() + _row_sparse_cases()
UPDATES = _update_cases()
ALL = CONSTRUCTION + UPDATES


def test_registry_size():
    assert len(ALL) >= 150, len(ALL)
    assert len({b.id for b in ALL}) == len(ALL)


def _check(bad: Bad) -> None:
    with pytest.raises(bad.error) as info:
        bad.call()
    message = str(info.value)
    missing = [w for w in bad.words if w not in message]
    assert not missing, f"{missing} not in: {message}"
    if bad.state is not None:
        box = bad.state()
        if "before" in box:
            jax.tree.map(np.testing.assert_array_equal, box["after"], box["before"])


@pytest.mark.parametrize("bad", CONSTRUCTION, ids=[b.id for b in CONSTRUCTION])
def test_bad_construction(bad):
    _check(bad)


@pytest.fixture(params=["strict", "default"])
def promotion(request):
    """Strict promotion (conftest) and JAX's defaults, which users run."""
    if request.param == "strict":
        yield
        return
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


@pytest.mark.parametrize("bad", UPDATES, ids=[b.id for b in UPDATES])
def test_bad_update(bad, promotion):
    _check(bad)
