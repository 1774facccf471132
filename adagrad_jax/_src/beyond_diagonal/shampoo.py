"""Shampoo with Adagrad statistics and grafting: `scale_by_shampoo`, `shampoo`."""

from __future__ import annotations

import string
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.beyond_diagonal import blocks, preconditioner
from adagrad_jax._src.core import checks, nonfinite_policy, placement, slots, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import (
    accumulator_dtype_for,
    adagrad_direction,
    guarded_divide,
    squared_magnitude,
)
from adagrad_jax._src.tables.row_sparse import check_dense

GRAFTS = ("adagrad", "sgd", None)


class ScaleByShampooState(NamedTuple):
    """State of `scale_by_shampoo`.

    Attributes:
      count: int32 scalar, the number of steps taken.
      sum_of_squares: a tree like the parameters holding A_t, the diagonal
        Adagrad sum of squared gradients (for grafting, for the steps before
        `start_preconditioning_step`, and for leaves preconditioned
        diagonally). float32 for bfloat16/float16 parameters; sharded like
        the parameters.
      statistics: a tree like the parameters; for each leaf with k >= 2
        dimensions larger than 1, a tuple of k arrays of shape (N, b_i, b_i):
        the sums H_i of the mode-i Gram matrices of the gradient's N blocks
        (L and R for a matrix); an empty tuple for leaves preconditioned
        diagonally. float32 (float64 for float64 parameters), replicated.
      preconditioners: the same shapes: the cached (H_i + eps I)^(-1/2k), as
        of the last refresh (zeros before the first one).
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    sum_of_squares: optax.Updates
    statistics: Any
    preconditioners: Any


def _gram(x: jax.Array, i: int) -> jax.Array:
    """sum over all other axes of x[z, ..., a, ...] x[z, ..., c, ...]: (N, b_i, b_i).

    Block axis i is moved next to the batch axis and the others flattened behind
    it, so that the product contracts the last axis of both operands: the
    batched matrix product XLA:CPU runs fastest (an einsum contracting axis 1
    runs about twice as slow).
    """
    y = jnp.moveaxis(x, 1 + i, 1).reshape(x.shape[0], x.shape[1 + i], -1)
    return jax.lax.dot_general(y, y, (((2,), (2,)), ((0,), (0,))), precision=preconditioner.HIGHEST)


def _mode_product(x: jax.Array, p: jax.Array, i: int) -> jax.Array:
    """x multiplied along block axis i by the (N, b_i, b_i) matrices p."""
    letters = string.ascii_lowercase[: x.ndim - 1]
    out = letters[:i] + "Z" + letters[i + 1 :]
    spec = f"yZ{letters[i]},y{letters}->y{out}"
    return jnp.einsum(spec, p, x, precision=preconditioner.HIGHEST)


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x))


@checks.checked_arguments
@shared_args
def scale_by_shampoo(
    *,
    block_size: int = 128,
    eps: jax.typing.ArrayLike = 1e-12,
    preconditioner_every: int = 10,
    start_preconditioning_step: int = 10,
    graft: str | None = "adagrad",
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Shampoo's Kronecker-factored preconditioner, with Adagrad statistics and grafting.

    For a matrix leaf G_t (m x n), at step t = 1, 2, ...::

        L_t = L_{t-1} + G_t G_t^T          R_t = R_{t-1} + G_t^T G_t    (L_0 = R_0 = 0)
        A_t = A_{t-1} + G_t * G_t                                       (diagonal, for the graft)
        D_t = (L_t + eps I)^(-1/4) G_t (R_t + eps I)^(-1/4)             (Shampoo direction)
        a_t = G_t / sqrt(A_t + eps)                                     (diagonal Adagrad)
        u_t = D_t * ||a_t|| / ||D_t||      graft='adagrad' (layer-wise: norms over the leaf)
        u_t = D_t * ||G_t|| / ||D_t||      graft='sgd'
        u_t = D_t                          graft=None
        u_t = a_t                          while t < start_preconditioning_step

    A tensor with k >= 2 dimensions larger than 1 (dimensions of size 1 are
    dropped first) keeps one statistic per dimension, H_i += G_(i) G_(i)^T
    (G_(i): the mode-i unfolding), and D_t = G_t x_1 (H_1 + eps I)^(-1/2k)
    ... x_k (H_k + eps I)^(-1/2k). A dimension d > `block_size` is cut into
    ceil(d / block_size) blocks (the last one zero-padded, which changes no
    number), and every block of the resulting grid has its own statistics;
    the norms of the graft stay layer-wise. Leaves with fewer than 2
    dimensions larger than 1 (biases, scalars) take the diagonal Adagrad
    step a_t.

    The inverse roots come from symmetric eigendecompositions (`jnp.linalg.eigh`),
    not from a coupled Newton iteration: eigh is exact for any conditioning
    (Newton's iteration needs a scaled, well-conditioned input and a tuned
    iteration count, and converges slowly for the near-singular statistics of
    the first steps), and the same decomposition gives every root. Eigenvalues
    below ``lambda_max * b * finfo.eps``, zero to the statistic's precision,
    get 0 (the pseudo-inverse), so a zero gradient or a singular statistic
    never gives NaN; in exact arithmetic this changes nothing for a freshly
    computed preconditioner, whose statistic contains the gradient. The
    guards ``||D|| == 0`` and ``A + eps == 0`` give a zero update.

    The preconditioners are recomputed at t = start, start + k, start + 2k,
    ... (k = `preconditioner_every`) inside a `jax.lax.cond`, and cached in
    the state. Ordinary steps cost 2k matrix products per block (k for the
    statistics, k for D) and a few elementwise passes: O(n b) for a leaf of n
    coordinates. A preconditioner step adds k eigendecompositions of b_i x b_i
    per block. Memory: the diagonal sum (n floats) plus 2 * sum_i b_i^2 per
    block. Statistics are float32 for bfloat16, float16 and float32
    parameters, float64 for float64 ones; updates come back in the gradient's
    dtype. Complex parameters are refused at `init`.

    Args:
      block_size: the largest block per dimension (an int >= 1). Default
        128. It fixes the state's shapes: under `optax.inject_hyperparams`,
        list it in ``static_args`` if `init` runs under `jax.jit`.
      eps: added to every statistic before its root is taken: H_i + eps I and
        A + eps (>= 0). Default 1e-12.
      preconditioner_every: recompute the preconditioners every this many
        steps (an int >= 1). Default 10.
      start_preconditioning_step: the first step (counted from 1) that uses
        Shampoo's direction; earlier steps take the diagonal Adagrad step,
        while the statistics accumulate (an int >= 1). Default 10.
      graft: whose step length the Shampoo direction takes, per leaf:
        'adagrad' (diagonal Adagrad's, the default), 'sgd' (the gradient's)
        or None (Shampoo's own, as in the paper).
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is `ScaleByShampooState`.

    Raises:
      ValueError, TypeError: at construction, for a `block_size`,
        `preconditioner_every` or `start_preconditioning_step` that is not
        an int >= 1, an `eps` that is negative, not finite or not a number,
        or an unknown `graft`; at `init`, TypeError for integer, boolean or
        complex parameters; at trace time, ValueError for gradients whose
        tree differs from the state's, or statistics that are not square
        blocks fitting their gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_shampoo(
      ...     graft=None, eps=0.0, preconditioner_every=1, start_preconditioning_step=1)
      >>> state = tx.init(jnp.zeros((2, 2)))
      >>> u, state = tx.update(jnp.array([[2.0, 0.0], [0.0, 0.0]]), state)
      >>> u.round(6)   # L = R = diag(4, 0): 4^(-1/4) * 2 * 4^(-1/4)
      Array([[1., 0.],
             [0., 0.]], dtype=float32)
      >>> [s.shape for s in state.statistics]   # L and R, one block each
      [(1, 2, 2), (1, 2, 2)]

    References:
      Gupta, Koren and Singer, "Shampoo: Preconditioned Stochastic Tensor
      Optimization", ICML 2018 (Algorithms 1 and 2). Agarwal, Anil, Hazan,
      Koren and Zhang, "Disentangling Adaptive Gradient Methods from
      Learning Rates", 2020 (grafting).
    """
    caller = "scale_by_shampoo"
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        _shampoo(caller, block_size, eps, preconditioner_every, start_preconditioning_step, graft),
        skips_inside=False,
    )


def _shampoo(caller, block_size, eps, preconditioner_every, start_preconditioning_step, graft):
    checks.check_integer(caller, "block_size", block_size, low=1)
    checks.check_number(caller, "eps", eps)
    checks.check_integer(caller, "preconditioner_every", preconditioner_every, low=1)
    checks.check_integer(caller, "start_preconditioning_step", start_preconditioning_step, low=1)
    checks.check_choice(caller, "graft", graft, GRAFTS)

    def init_fn(params):
        b_max = preconditioner.shape_argument(caller, "block_size", block_size)

        def leaf(path, p):
            if not hasattr(p, "shape"):
                p = jnp.asarray(p)
            dtype = preconditioner.statistics_dtype(caller, path, p.dtype)
            acc = slots.placed_full(
                p, tuple(p.shape), 0, accumulator_dtype_for(p.dtype), replicate=False
            )
            lay = blocks.layout(tuple(p.shape), b_max, flatten=False)
            if lay is None:
                return blocks.LeafState(statistics=(), preconditioners=(), sum_of_squares=acc)
            stats = tuple(
                slots.placed_full(p, (lay.num_blocks, b, b), 0, dtype, replicate=True)
                for b in lay.blocks
            )
            precs = tuple(
                slots.placed_full(p, (lay.num_blocks, b, b), 0, dtype, replicate=True)
                for b in lay.blocks
            )
            return blocks.LeafState(statistics=stats, preconditioners=precs, sum_of_squares=acc)

        state = blocks.per_leaf(leaf, params)
        return ScaleByShampooState(
            count=preconditioner.placed_count(params),
            sum_of_squares=state.sum_of_squares,
            statistics=state.statistics,
            preconditioners=state.preconditioners,
        )

    def update_fn(updates, state, params=None):
        del params
        check_dense(caller, updates)
        updates = jax.tree.map(jnp.asarray, updates)
        trees.check_same_shapes(
            caller, "updates", updates, "state.sum_of_squares", state.sum_of_squares
        )
        blocks.check_statistics(caller, updates, state.statistics, flatten=False)
        treedef = jax.tree.structure(updates)
        gs = treedef.flatten_up_to(updates)
        accs = treedef.flatten_up_to(state.sum_of_squares)
        stats = treedef.flatten_up_to(state.statistics)
        precs = treedef.flatten_up_to(state.preconditioners)

        accs = [a + squared_magnitude(g, a.dtype) for g, a in zip(gs, accs)]
        layouts = [
            blocks.layout_from_state(tuple(g.shape), s, flatten=False) if s else None
            for g, s in zip(gs, stats)
        ]
        xs = [
            None if lay is None else blocks.to_blocks(placement.replicated(g), lay, s[0].dtype)
            for g, lay, s in zip(gs, layouts, stats)
        ]
        stats = [
            tuple(h + _gram(x, i) for i, h in enumerate(s)) if x is not None else ()
            for x, s in zip(xs, stats)
        ]

        def recompute(stats, previous):
            flat = [h for s in stats for h in s]
            roots = [2 * len(s) for s in stats for _ in s]
            new = iter(
                preconditioner.refresh(
                    [p for prev in previous for p in prev], flat, roots, eps_root=eps, eps=0.0
                )
            )
            return [tuple(next(new) for _ in s) for s in stats]

        due = preconditioner.refresh_due(
            state.count, preconditioner_every, start_preconditioning_step
        )
        if due is True:
            precs = recompute(stats, precs)
        elif any(stats):
            precs = jax.lax.cond(due, recompute, lambda s, p: p, stats, precs)

        if preconditioner.is_python_one(start_preconditioning_step):
            started = True
        else:
            t = state.count.astype(jnp.int32) + 1
            started = t >= jnp.asarray(start_preconditioning_step).astype(jnp.int32)

        new_updates = []
        for g, a, lay, x, ps in zip(gs, accs, layouts, xs, precs):
            diag = adagrad_direction(g, a, 0.0, eps, tau=0.0)
            if lay is None:
                new_updates.append(diag)
                continue
            d = x
            for i, p in enumerate(ps):
                d = _mode_product(d, p, i)
            d = placement.sharded_like(blocks.from_blocks(d, lay, tuple(g.shape)), g)
            if graft is not None:
                target = _norm((diag if graft == "adagrad" else g).astype(d.dtype))
                d = d * guarded_divide(target, _norm(d))  # 0 for a zero direction.
            d = d.astype(g.dtype)
            new_updates.append(d if started is True else jnp.where(started, d, diag))

        return treedef.unflatten(new_updates), ScaleByShampooState(
            count=optax.safe_increment(state.count),
            sum_of_squares=treedef.unflatten(accs),
            statistics=treedef.unflatten(stats),
            preconditioners=treedef.unflatten(precs),
        )

    return optax.GradientTransformation(init_fn, update_fn)


@checks.checked_arguments
@shared_args
def shampoo(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    block_size: int = 128,
    eps: jax.typing.ArrayLike = 1e-12,
    preconditioner_every: int = 10,
    start_preconditioning_step: int = 10,
    graft: str | None = "adagrad",
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Shampoo: one Kronecker factor per tensor dimension, Adagrad statistics, grafted step size.

    For a matrix leaf G_t (m x n), at step t = 1, 2, ... (count = t - 1)::

        L_t     = L_{t-1} + G_t G_t^T                           (L_0 = 0)
        R_t     = R_{t-1} + G_t^T G_t                           (R_0 = 0)
        A_t     = A_{t-1} + G_t * G_t                           (diagonal, for the graft)
        D_t     = (L_t + eps I)^(-1/4) G_t (R_t + eps I)^(-1/4)
        a_t     = G_t / sqrt(A_t + eps)                         (diagonal Adagrad)
        u_t     = -lr(count) * D_t * ||a_t|| / ||D_t||          (graft='adagrad', per leaf)
        u_t     = -lr(count) * a_t                              (t < start_preconditioning_step)
        w_{t+1} = w_t + u_t

    Tensors of rank k use one factor per dimension and the -1/2k root; dimensions
    larger than `block_size` are cut into blocks, each with its own factors;
    rank-0 and rank-1 leaves take the diagonal Adagrad step. The roots come
    from symmetric eigendecompositions (the pseudo-inverse for eigenvalues that
    are zero to the statistic's precision) and are recomputed every
    `preconditioner_every` steps from `start_preconditioning_step` on, inside a
    `jax.lax.cond`. `scale_by_shampoo` documents every detail and the cost.

    With grafting, the step length per layer is diagonal Adagrad's, so the
    learning rate that suits `adagrad` suits `shampoo`; Shampoo only turns the
    step towards better-conditioned directions.

    This is ``optax.chain(scale_by_shampoo(...),
    optax.scale_by_learning_rate(learning_rate))``.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      block_size: the largest block per dimension (an int >= 1). Default 128.
      eps: added to every statistic before its root is taken (>= 0).
        Default 1e-12.
      preconditioner_every: recompute the preconditioners every this many
        steps (an int >= 1). Default 10.
      start_preconditioning_step: the first step using Shampoo's direction
        (an int >= 1); earlier steps are diagonal Adagrad. Default 10.
      graft: 'adagrad' (default), 'sgd' or None (the paper's raw step).
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> tx = adagrad_jax.shampoo(learning_rate=0.1, block_size=16,
      ...                          preconditioner_every=1, start_preconditioning_step=1)
      >>> params = {"w": jnp.eye(3), "b": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.diag(jnp.array([1.0, 2.0, 4.0])), "b": jnp.ones(3)}
      >>> updates, state = tx.update(grads, state)
      >>> (-updates["w"]).round(6)   # direction I (L = R = diag(1, 4, 16)), length
      ...                             # |sign(g)| = |I| (diagonal Adagrad): 0.1 * I
      Array([[0.1, 0. , 0. ],
             [0. , 0.1, 0. ],
             [0. , 0. , 0.1]], dtype=float32)
      >>> [s.shape for s in state[0].statistics["w"]]
      [(1, 3, 3), (1, 3, 3)]

    References:
      Gupta, Koren and Singer, "Shampoo: Preconditioned Stochastic Tensor
      Optimization", ICML 2018. Anil, Gupta, Koren, Regan and Singer,
      "Scalable Second Order Optimization for Deep Learning", 2020 (blocking,
      grafting).
    """
    caller = "shampoo"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _shampoo(
                caller, block_size, eps, preconditioner_every, start_preconditioning_step, graft
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=False,
    )
