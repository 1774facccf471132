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

import jax
import optax

import adagrad_jax
from adagrad_jax import compat, schedules
from tests import reference, reference_beyond


def the_state(state, kind):
    """The one state of class `kind` inside an optimizer state (a chain's, a wrapper's)."""
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
        if isinstance(x, kind)
    ]
    assert len(found) == 1, found
    return found[0]


def adagrad_accumulators(state) -> list:
    """The leaves of the one `ScaleByAdagradState` inside an optimizer state."""
    return jax.tree.leaves(the_state(state, adagrad_jax.ScaleByAdagradState).sum_of_squares)


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to build one optimizer and what it must do.

    Attributes:
      name: test id.
      make: factory returning an `optax.GradientTransformation`.
      hyperparams: keyword arguments for `make`; numeric ones are injected as
        arrays by `optax.inject_hyperparams` in the conformance suite.
      reference: the float64 NumPy rule with the same hyperparameters bound
        (a `reference.Reference`).
      converge: hyperparameters that minimise the test problems, or None for
        a transform that does not descend (a bare preconditioner).
      accumulators: ``state -> list`` of the optimizer's per-leaf sums of
        squared gradients (compared with the reference's), or None.
      complex_params: whether the documented rule covers complex parameters.
      uses_params: whether `update` needs `params` for an optional term
        (weight decay) that the spec's hyperparameters switch on.
      needs_params: whether the rule itself needs `params` in every `update`
        (proximal and dual-averaging rules); `update` without them must fail
        clearly.
      row_sparse: whether the optimizer takes `RowSparse` gradients for tables.
      lazy_matches_dense: with `row_sparse`, whether a zero gradient row leaves
        a row unchanged in the dense rule too (so row-sparse training equals
        dense training on every row, touched or not).
      param_shaped_state: whether the state holds arrays shaped like the
        parameters (which must keep their sharding); False for rules whose
        statistics are matrix blocks or scalars.
      stacked_slots: how many slots each such array holds on a last axis
        (`ftrl`'s n and z, `adagrad_da`'s z and G: 2; shape ``p.shape + (2,)``,
        sharded like the parameter with the slot axis unsplit), or 0 where
        each slot is its own array of the parameter's shape.
      jit_init_follows_params: whether plain ``jax.jit(tx.init)(params)`` on a
        mesh with Explicit axes places the state like the parameters. False
        where no state leaf is computed from a parameter (matrix blocks,
        scalars): jax.jit then drops the parameters and puts the whole state
        on one device; ``out_shardings=adagrad_jax.state_shardings(tx,
        params)`` places it (tests/mesh_conformance.py checks both).
      coordinatewise: whether each coordinate's step depends on that
        coordinate's gradient and state alone (the diagonal family). Then
        ``nonfinite="skip_coordinate"`` leaves every other coordinate exactly
        where ``"propagate"`` takes it; matrix and norm rules couple them.
      float32_low_precision_updates: whether the updates of bfloat16 and
        float16 parameters come back in float32 (the exact step, which applying
        rounds once, as FBGEMM stores FP16 rows) instead of the gradient's dtype.
      shares_row_state: whether a table row's coordinates share their state (one
        accumulator and norm per row, FBGEMM's row-wise rule), so that
        ``nonfinite="skip_coordinate"`` keeps the whole row.
      quantized_state: whether the accumulator is stored in 8 bits
        (``accumulator_dtype="int8"``), requantized stochastically at every step:
        its numbers follow the reference to the code's precision (one level, 6.7-12.5%
        of a sum), not to float rounding, so the clauses that compare with the
        float64 reference or with a run keyed at other positions use that
        tolerance.
      rounds_weights: whether such updates land on a stochastically rounded
        weight (``stochastic_rounding=True``): each is then the exact step up
        to one bfloat16 spacing of the weight, not of the step.
    """

    name: str
    make: Callable[..., optax.GradientTransformation]
    hyperparams: dict[str, Any]
    reference: reference.Reference
    converge: dict[str, Any] | None
    accumulators: Callable[[Any], list] | None = adagrad_accumulators
    complex_params: bool = True
    uses_params: bool = False
    needs_params: bool = False
    row_sparse: bool = False
    lazy_matches_dense: bool = False
    param_shaped_state: bool = True
    stacked_slots: int = 0
    jit_init_follows_params: bool = True
    coordinatewise: bool = True
    float32_low_precision_updates: bool = False
    rounds_weights: bool = False
    quantized_state: bool = False
    shares_row_state: bool = False

    def build(self, **overrides) -> optax.GradientTransformation:
        return self.make(**{**self.hyperparams, **overrides})


SPECS = [
    Spec(
        name="adagrad-defaults",
        make=adagrad_jax.adagrad,
        hyperparams={},
        reference=reference.leafwise(reference.adagrad_step, tau=0.0, lr=0.01, eps=1e-8),
        converge={"learning_rate": 0.5},
    ),
    Spec(
        name="adagrad-all-options",
        make=adagrad_jax.adagrad,
        hyperparams=dict(
            learning_rate=0.05,
            initial_accumulator_value=0.3,
            eps=1e-3,
            eps_root=0.2,
            weight_decay=0.01,
        ),
        reference=reference.leafwise(
            reference.adagrad_step, tau=0.3, lr=0.05, eps=1e-3, eps_root=0.2, weight_decay=0.01
        ),
        converge={"learning_rate": 0.5, "weight_decay": 0.0},
        uses_params=True,
    ),
    Spec(
        name="adagrad-schedule",
        make=adagrad_jax.adagrad,
        hyperparams=dict(learning_rate=schedules.inverse_time_decay(0.1, 0.5), eps=0.0),
        reference=reference.leafwise(
            reference.adagrad_step, tau=0.0, lr=lambda c: 0.1 / (1 + 0.5 * c), eps=0.0
        ),
        converge={"learning_rate": schedules.inverse_time_decay(0.5, 1e-4)},
    ),
    Spec(
        name="sparse_adagrad-dense-leaves",
        make=adagrad_jax.sparse_adagrad,
        hyperparams=dict(learning_rate=0.05, initial_accumulator_value=0.2, eps=1e-6, eps_root=0.1),
        reference=reference.leafwise(
            reference.adagrad_step, tau=0.2, lr=0.05, eps=1e-6, eps_root=0.1
        ),
        converge={"learning_rate": 0.5},
        row_sparse=True,
        lazy_matches_dense=True,
    ),
    Spec(
        name="scale_by_adagrad",
        make=adagrad_jax.scale_by_adagrad,
        hyperparams=dict(initial_accumulator_value=0.1, eps=1e-6),
        reference=reference.leafwise(reference.adagrad_step, tau=0.1, lr=-1.0, eps=1e-6),
        converge=None,
    ),
    Spec(
        name="compat.torch_adagrad",
        make=compat.torch_adagrad,
        hyperparams=dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
        reference=reference.leafwise(
            reference.torch_step, tau=0.1, lr=0.1, lr_decay=0.01, weight_decay=0.01
        ),
        converge={"lr": 0.5, "lr_decay": 0.0, "weight_decay": 0.0},
        complex_params=False,
        uses_params=True,
    ),
    Spec(
        name="compat.keras_adagrad",
        make=compat.keras_adagrad,
        hyperparams=dict(
            learning_rate=0.1, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=0.004
        ),
        reference=reference.leafwise(
            reference.keras3_step, tau=0.1, lr=0.1, epsilon=1e-7, weight_decay=0.004
        ),
        converge={"learning_rate": 0.5, "weight_decay": None},
        complex_params=False,
        uses_params=True,
    ),
    Spec(
        name="compat.tf1_adagrad",
        make=compat.tf1_adagrad,
        hyperparams=dict(learning_rate=0.1, initial_accumulator_value=0.1),
        reference=reference.leafwise(reference.tf1_step, tau=0.1, lr=0.1),
        converge={"learning_rate": 0.5},
        complex_params=False,
    ),
]


def _sum_of_squares(state) -> list:
    """The per-leaf G (or n) of the regularized family's states."""
    return jax.tree.leaves(state.sum_of_squares)


def _pick(index):
    return lambda leaf_state: leaf_state[index]


REGULARIZED = dict(
    accumulators=_sum_of_squares, complex_params=False, needs_params=True, row_sparse=True
)

SPECS += [
    Spec(
        name="proximal_adagrad",
        make=adagrad_jax.proximal_adagrad,
        hyperparams=dict(
            learning_rate=0.1,
            initial_accumulator_value=0.1,
            eps=1e-7,
            l1=0.01,
            l2=0.02,
            eps_root=0.05,
        ),
        reference=reference.leafwise(
            reference.proximal_adagrad_step,
            tau=0.1,
            lr=0.1,
            l1=0.01,
            l2=0.02,
            eps=1e-7,
            eps_root=0.05,
        ),
        converge={"learning_rate": 0.5, "l1": 0.0, "l2": 0.0},
        **REGULARIZED,
    ),
    Spec(
        name="proximal_adagrad-schedule",
        make=adagrad_jax.proximal_adagrad,
        hyperparams=dict(learning_rate=schedules.inverse_time_decay(0.2, 0.5), l1=0.02),
        reference=reference.leafwise(
            reference.proximal_adagrad_step, tau=0.0, lr=lambda c: 0.2 / (1 + 0.5 * c), l1=0.02
        ),
        converge=None,
        **REGULARIZED,
    ),
    Spec(
        name="adagrad_da",
        make=adagrad_jax.adagrad_da,
        hyperparams=dict(
            learning_rate=0.2, initial_accumulator_value=0.1, l1=0.01, l2=0.02, eps=1e-6
        ),
        reference=reference.leafwise_state(
            reference.adagrad_da_step,
            lambda w: reference.adagrad_da_init(w, tau=0.1),
            accumulator=_pick(1),
            lr=0.2,
            l1=0.01,
            l2=0.02,
            eps=1e-6,
        ),
        converge={"learning_rate": 0.5, "l1": 0.0, "l2": 0.0},
        **REGULARIZED,
    ),
    Spec(
        name="ftrl",
        make=adagrad_jax.ftrl,
        hyperparams=dict(
            learning_rate=0.2,
            learning_rate_power=-0.5,
            initial_accumulator_value=0.1,
            l1=0.01,
            l2=0.02,
            l2_shrinkage=0.01,
            beta=0.1,
        ),
        reference=reference.leafwise_state(
            reference.ftrl_step,
            lambda w: reference.ftrl_init(w, tau=0.1, lr=0.2, beta=0.1),
            accumulator=_pick(0),
            lr=0.2,
            l1=0.01,
            l2=0.02,
            l2_shrinkage=0.01,
            beta=0.1,
        ),
        converge={"learning_rate": 0.5, "l1": 0.0, "l2": 0.0, "l2_shrinkage": 0.0, "beta": 0.0},
        **REGULARIZED,
    ),
    Spec(
        # TF's multiply_linear_by_lr against training_ops.cc's kernel in TF's units
        # (l2 and l2_shrinkage halved); warm start: Z_0 = -(tau^p + beta) * w_0.
        name="ftrl-linear_times_lr",
        make=adagrad_jax.ftrl,
        hyperparams=dict(
            learning_rate=0.2,
            initial_accumulator_value=0.1,
            l1=0.01,
            l2=0.02,
            l2_shrinkage=0.01,
            beta=0.1,
            multiply_linear_by_learning_rate=True,
        ),
        reference=reference.leafwise_state(
            reference.tf_ftrl_times_lr_step,
            lambda w: reference.ftrl_init(w, tau=0.1, lr=1.0, beta=0.1),
            accumulator=_pick(0),
            lr=0.2,
            l1=0.01,
            l2=0.01,
            l2_shrinkage=0.005,
            beta=0.1,
        ),
        converge={"learning_rate": 0.5, "l1": 0.0, "l2": 0.0, "l2_shrinkage": 0.0, "beta": 0.0},
        **REGULARIZED,
    ),
    Spec(
        name="ftrl-power",
        make=adagrad_jax.ftrl,
        hyperparams=dict(
            learning_rate=0.3, learning_rate_power=-0.3, initial_accumulator_value=0.5, l1=0.02
        ),
        reference=reference.leafwise_state(
            reference.ftrl_step,
            lambda w: reference.ftrl_init(w, tau=0.5, lr=0.3, p=0.3),
            accumulator=_pick(0),
            lr=0.3,
            p=0.3,
            l1=0.02,
        ),
        converge=None,
        **REGULARIZED,
    ),
    Spec(
        name="compat.tf1_proximal_adagrad",
        make=compat.tf1_proximal_adagrad,
        hyperparams=dict(
            learning_rate=0.1,
            initial_accumulator_value=0.1,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.02,
        ),
        reference=reference.leafwise(
            reference.tf1_proximal_adagrad_step, tau=0.1, lr=0.1, l1=0.01, l2=0.02
        ),
        converge={
            "learning_rate": 0.5,
            "l1_regularization_strength": 0.0,
            "l2_regularization_strength": 0.0,
        },
        **REGULARIZED,
    ),
    Spec(
        name="compat.tf1_adagrad_da",
        make=compat.tf1_adagrad_da,
        hyperparams=dict(
            learning_rate=0.2,
            initial_gradient_squared_accumulator_value=0.1,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.02,
        ),
        reference=reference.leafwise_state(
            reference.tf1_adagrad_da_step,
            lambda w: reference.adagrad_da_init(w, tau=0.1, warm_start=False),
            accumulator=_pick(1),
            lr=0.2,
            l1=0.01,
            l2=0.02,
        ),
        converge=None,
        **REGULARIZED,
    ),
    Spec(
        name="compat.keras_ftrl",
        make=compat.keras_ftrl,
        hyperparams=dict(
            learning_rate=0.2,
            learning_rate_power=-0.5,
            initial_accumulator_value=0.1,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.01,
            l2_shrinkage_regularization_strength=0.005,
            beta=0.1,
        ),
        reference=reference.leafwise_state(
            reference.keras_ftrl_step,
            lambda w: reference.ftrl_init(w, tau=0.1, lr=0.2, warm_start=False),
            accumulator=_pick(0),
            lr=0.2,
            l1=0.01,
            l2=0.01,
            l2_shrinkage=0.005,
            beta=0.1,
        ),
        converge=None,
        **REGULARIZED,
    ),
]


def _adagrad_momentum_accumulators(state) -> list:
    """a, the accumulator of the one `ScaleByAdagradMomentumState` inside a state."""
    return jax.tree.leaves(the_state(state, adagrad_jax.ScaleByAdagradMomentumState).accumulator)


# --- Adagrad with momentum (TPU embeddings): two slots, like ftrl; tables are lazy ----
ADAGRAD_MOMENTUM = dict(
    make=adagrad_jax.adagrad_momentum,
    accumulators=_adagrad_momentum_accumulators,
    complex_params=False,
    row_sparse=True,
)
SPECS += [
    Spec(
        name="adagrad_momentum",
        hyperparams=dict(
            learning_rate=0.1,
            momentum=0.9,
            eps=1e-6,
            initial_accumulator_value=0.1,
            initial_momentum_value=0.05,
        ),
        reference=reference.leafwise_state(
            reference.adagrad_momentum_step,
            lambda w: reference.adagrad_momentum_init(w, tau=0.1, m0=0.05),
            accumulator=_pick(0),
            lr=0.1,
            momentum=0.9,
            eps=1e-6,
        ),
        converge={"learning_rate": 0.1, "initial_momentum_value": 0.0},
        **ADAGRAD_MOMENTUM,
    ),
    Spec(
        name="adagrad_momentum-nesterov",
        hyperparams=dict(
            learning_rate=schedules.inverse_time_decay(0.1, 0.5),
            momentum=0.8,
            beta2=0.95,
            exponent=4.0,
            eps=1e-4,
            use_nesterov=True,
            initial_accumulator_value=0.2,
        ),
        reference=reference.leafwise_state(
            reference.adagrad_momentum_step,
            lambda w: reference.adagrad_momentum_init(w, tau=0.2),
            accumulator=_pick(0),
            lr=lambda c: 0.1 / (1 + 0.5 * c),
            momentum=0.8,
            beta2=0.95,
            exponent=4.0,
            eps=1e-4,
            use_nesterov=True,
        ),
        converge=None,
        **ADAGRAD_MOMENTUM,
    ),
]


# ftrl and adagrad_da with their slots stacked (one array per parameter): every clause again.
SPECS += [
    dataclasses.replace(
        spec,
        name=f"{spec.name}-stacked_slots",
        hyperparams={**spec.hyperparams, "stack_slots": True},
        converge=None,
        stacked_slots=2,
    )
    for spec in SPECS
    # (One spec per family: the layouts share the rule, so one stacked run per rule
    # covers them; CI time is bounded.)
    if spec.name in ("adagrad_da", "ftrl", "adagrad_momentum-nesterov")
]

# --- beyond the diagonal: full-matrix Adagrad, Shampoo, AdaGrad-Norm ------------
# Hyperparameters keep every statistic's inverse root bounded (tau, eps_root or eps
# inside the root), so that eigensolver rounding stays at float32 / float64 level and
# the suite's tolerances apply; tests/test_full_matrix.py and tests/test_shampoo.py
# cover the singular cases. Structural arguments (block_size, preconditioner_every,
# start_preconditioning_step) are ints: inject_hyperparams passes them as concrete
# arrays to init, which reads them, and update never needs them.


def _full_matrix_reference(*, lr, block_size, tau, **hyper) -> reference.Reference:
    return reference.Reference(
        functools.partial(reference_beyond.full_matrix_init, block_size=block_size, tau=tau),
        functools.partial(reference_beyond.full_matrix_step, lr=lr, **hyper),
    )


def _shampoo_reference(*, lr, block_size, **hyper) -> reference.Reference:
    return reference.Reference(
        functools.partial(reference_beyond.shampoo_init, block_size=block_size),
        functools.partial(reference_beyond.shampoo_step, lr=lr, block_size=block_size, **hyper),
        accumulators=lambda state: state["A"],
    )


def _adagrad_norm_reference(*, lr, tau, eps, per_leaf) -> reference.Reference:
    return reference.Reference(
        functools.partial(reference_beyond.adagrad_norm_init, tau=tau, per_leaf=per_leaf),
        functools.partial(reference_beyond.adagrad_norm_step, lr=lr, eps=eps, per_leaf=per_leaf),
        accumulators=lambda state: [float(b) for b in state["b2"]] if per_leaf else [state["b2"]],
    )


def _inner_sums(state) -> list:
    """The diagonal sums (Shampoo's A, AdaGrad-Norm's b^2) of the chain's first state."""
    return jax.tree.leaves(state[0].sum_of_squares)


SPECS += [
    Spec(
        name="full_matrix_adagrad",
        make=adagrad_jax.full_matrix_adagrad,
        hyperparams=dict(
            learning_rate=0.1,
            block_size=3,
            initial_accumulator_value=0.1,
            eps=1e-3,
            eps_root=0.05,
            preconditioner_every=2,
        ),
        reference=_full_matrix_reference(
            lr=0.1, block_size=3, tau=0.1, eps=1e-3, eps_root=0.05, every=2
        ),
        # One 2 x 2 block on Rosenbrock's valley wants fresh preconditioners.
        converge={"learning_rate": 0.2, "preconditioner_every": 1},
        accumulators=None,
        complex_params=False,
        param_shaped_state=False,
        jit_init_follows_params=False,
        coordinatewise=False,
    ),
    Spec(
        name="shampoo-blocked",
        make=adagrad_jax.shampoo,
        hyperparams=dict(
            learning_rate=0.1,
            block_size=2,
            eps=1e-3,
            preconditioner_every=2,
            start_preconditioning_step=2,
        ),
        reference=_shampoo_reference(lr=0.1, block_size=2, eps=1e-3, every=2, start=2),
        converge={"learning_rate": 0.5},
        accumulators=_inner_sums,
        complex_params=False,
        jit_init_follows_params=False,
        coordinatewise=False,
    ),
    Spec(
        name="shampoo-paper",
        make=functools.partial(adagrad_jax.shampoo, graft=None),  # a str/None stays static
        hyperparams=dict(
            learning_rate=0.1, eps=0.1, preconditioner_every=1, start_preconditioning_step=1
        ),
        reference=_shampoo_reference(lr=0.1, block_size=128, eps=0.1, every=1, start=1, graft=None),
        converge=None,
        accumulators=_inner_sums,
        complex_params=False,
        jit_init_follows_params=False,
        coordinatewise=False,
    ),
    Spec(
        name="adagrad_norm",
        make=adagrad_jax.adagrad_norm,
        hyperparams=dict(learning_rate=0.1, initial_accumulator_value=0.5, eps=1e-3),
        reference=_adagrad_norm_reference(lr=0.1, tau=0.5, eps=1e-3, per_leaf=True),
        converge={"learning_rate": 2.0},
        accumulators=_inner_sums,
        param_shaped_state=False,
        jit_init_follows_params=False,
        coordinatewise=False,
    ),
    Spec(
        name="adagrad_norm-per-model",
        make=functools.partial(adagrad_jax.adagrad_norm, per_leaf=False),  # a bool stays static
        hyperparams=dict(learning_rate=0.1),
        reference=_adagrad_norm_reference(lr=0.1, tau=0.0, eps=1e-8, per_leaf=False),
        converge={"learning_rate": 2.0},
        accumulators=_inner_sums,
        param_shaped_state=False,
        jit_init_follows_params=False,
        coordinatewise=False,
    ),
]


def _sm3_accumulators(state) -> list:
    """Every SM3 accumulator (each leaf's vectors, or its full one), in leaf order, flat."""
    return jax.tree.leaves(the_state(state, adagrad_jax.ScaleBySM3State).accumulators)


# --- memory-efficient: SM3 (one accumulator vector per axis) ----------------------
SPECS += [
    Spec(
        name=f"sm3{'-momentum' if momentum else ''}",
        make=adagrad_jax.sm3,
        hyperparams=dict(learning_rate=0.1, momentum=momentum, eps=1e-6),
        reference=dataclasses.replace(
            reference.leafwise_state(
                reference.sm3_step, reference.sm3_init, lr=0.1, momentum=momentum, eps=1e-6
            ),
            accumulators=lambda states: [mu for s in states for mu in s["mu"]],
        ),
        converge={"learning_rate": 0.5} if not momentum else None,
        accumulators=_sm3_accumulators,
        complex_params=False,
        param_shaped_state=bool(momentum),  # vectors only, without momentum
        jit_init_follows_params=False,
        coordinatewise=False,
        row_sparse=True,
        # Lazy rows are the dense rule without momentum; with it, untouched rows'
        # m would decay densely and stays lazily.
        lazy_matches_dense=not momentum,
    )
    for momentum in (0.0, 0.9)
]

# --- FBGEMM's table Adagrad (compat presets; rows are leading-axis entries) ----------
FBGEMM = dict(
    accumulators=lambda state: jax.tree.leaves(adagrad_jax.accumulators(state)),
    complex_params=False,
    needs_params=True,
    row_sparse=True,
    float32_low_precision_updates=True,
)
SPECS += [
    Spec(
        name="compat.fbgemm_rowwise_adagrad",
        make=compat.fbgemm_rowwise_adagrad,
        hyperparams=dict(
            learning_rate=0.1, eps=1e-3, weight_decay=0.05, weight_decay_mode="l2", max_norm=1.5
        ),
        reference=reference.fbgemm_rowwise(
            lr=0.1, eps=1e-3, weight_decay=0.05, mode="l2", max_norm=1.5
        ),
        converge={"learning_rate": 0.5, "weight_decay": 0.0, "max_norm": 0.0},
        param_shaped_state=False,  # one number per row
        coordinatewise=False,  # a row shares its accumulator and its norm
        shares_row_state=True,
        **FBGEMM,
    ),
    Spec(
        name="compat.fbgemm_rowwise_adagrad-decoupled-schedule",
        make=compat.fbgemm_rowwise_adagrad,
        hyperparams=dict(
            learning_rate=schedules.inverse_time_decay(0.2, 0.5),
            weight_decay=0.1,
            weight_decay_mode="decoupled",
        ),
        reference=reference.fbgemm_rowwise(
            lr=lambda c: 0.2 / (1 + 0.5 * c), weight_decay=0.1, mode="decoupled"
        ),
        converge=None,
        param_shaped_state=False,
        coordinatewise=False,
        shares_row_state=True,
        **FBGEMM,
    ),
    Spec(
        name="compat.fbgemm_exact_adagrad",
        make=compat.fbgemm_exact_adagrad,
        hyperparams=dict(
            learning_rate=0.1, eps=1e-3, weight_decay=0.05, weight_decay_mode="decoupled"
        ),
        reference=reference.leafwise(
            reference.fbgemm_exact_step,
            tau=0.0,
            lr=0.1,
            eps=1e-3,
            weight_decay=0.05,
            mode="decoupled",
        ),
        converge={"learning_rate": 0.5, "weight_decay": 0.0},
        **FBGEMM,
    ),
]

DESCENDING = [s for s in SPECS if s.converge is not None]

# Stochastic rounding on: float32 parameters are not rounded, so every clause holds
# with the plain reference; the state is wrapped (StochasticRoundingState) and update
# always needs params. tests/test_stochastic_rounding.py checks the rounding itself.
SPECS += [
    dataclasses.replace(
        spec,
        name=f"{spec.name}-stochastic_rounding",
        hyperparams={**spec.hyperparams, "stochastic_rounding": True, "seed": 3},
        converge=None,
        needs_params=True,
        accumulators=lambda state: jax.tree.leaves(adagrad_jax.accumulators(state)),
        float32_low_precision_updates=True,
        rounds_weights=True,
    )
    for spec in SPECS
    # (One: the wrapper is the same for every optimizer; tests/test_stochastic_rounding.py
    # runs the rounding itself on every row-sparse optimizer. CI time is bounded.)
    if spec.name == "adagrad-all-options"
]

# 8-bit accumulators (accumulator_dtype="int8"): the reference to the code's precision.
SPECS += [
    Spec(
        name="adagrad-int8",
        make=adagrad_jax.adagrad,
        hyperparams=dict(learning_rate=0.1, initial_accumulator_value=0.1, accumulator_dtype="int8"),
        reference=reference.leafwise(reference.adagrad_step, tau=0.1, lr=0.1, eps=1e-8),
        converge={"learning_rate": 0.5},
        accumulators=lambda state: jax.tree.leaves(adagrad_jax.accumulators(state)),
        row_sparse=True,
        lazy_matches_dense=True,
        quantized_state=True,
    ),
]
# The two-slot path (n in 8 bits beside a float32 z; slots apart): ftrl, whose z sums
# terms of n (tests/test_int8.py trains adagrad_da and adagrad_momentum in 8 bits).
SPECS += [
    dataclasses.replace(
        spec,
        name="ftrl-int8",
        hyperparams={**spec.hyperparams, "accumulator_dtype": "int8"},
        accumulators=lambda state: jax.tree.leaves(adagrad_jax.accumulators(state)),
        quantized_state=True,
        # The step reads n as stored, decoded with its block's scale: a non-finite
        # gradient under "propagate" spoils its whole block of 64.
        coordinatewise=False,
    )
    for spec in SPECS
    if spec.name == "ftrl"
]
