"""Blocked full-matrix Adagrad: `scale_by_full_matrix_adagrad`, `full_matrix_adagrad`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.beyond_diagonal import blocks, preconditioner
from adagrad_jax._src.core import checks, nonfinite_policy, placement, slots, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.tables.row_sparse import check_dense


class ScaleByFullMatrixAdagradState(NamedTuple):
    """State of `scale_by_full_matrix_adagrad`.

    Attributes:
      count: int32 scalar, the number of steps taken.
      statistics: a tree like the parameters; each leaf of n coordinates holds
        its blocks' G, an array of shape (ceil(n / b), b, b) with
        b = min(block_size, n): the sum of g g^T over the steps, started at
        tau * I. float32 (float64 for float64 parameters), replicated over
        the parameter's mesh.
      preconditioners: the same shapes and dtypes: the cached
        (G^(1/2) + eps I)^-1 of each block, as of the last refresh (zeros
        before the first step).
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    statistics: optax.Updates
    preconditioners: optax.Updates


@checks.checked_arguments
@shared_args
def scale_by_full_matrix_adagrad(
    *,
    block_size: int = 64,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    preconditioner_every: int = 1,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Preconditions each block of coordinates by the inverse root of its sum of g g^T.

    Each leaf is flattened (row-major) and cut into consecutive blocks of
    b = min(block_size, n) coordinates (the last block padded with zeros,
    which never move). For each block, at step t = 1, 2, ...::

        G_0 = initial_accumulator_value * I                     (tau I, at init)
        G_t = G_{t-1} + g_t g_t^T                               (before use)
        P_t = (sqrt(G_t + eps_root I) + eps I)^-1               (refreshed steps)
        P_t = P_{t-1}                                           (other steps)
        u_t = P_t g_t

    P is computed from the eigendecomposition G = Q diag(lambda) Q^T as
    Q diag(1 / (sqrt(lambda + eps_root) + eps)) Q^T. Eigenvalues below
    ``lambda_max * b * finfo.eps`` (zero to the statistic's precision:
    directions that no gradient has touched yet, and eigensolver noise) get
    0 instead: the pseudo-inverse, so the update is never NaN and a zero
    gradient gives a zero update. While every refreshed P_t contains the
    current gradient (``preconditioner_every=1``) this is exactly the formula.
    P is refreshed at t = 1, 1 + k, 1 + 2k, ... for k = `preconditioner_every`
    (a `jax.lax.cond`, so other steps skip the eigendecompositions); between
    refreshes, a direction that was not in the range of G at the last
    refresh gets no step.

    With ``block_size=1`` every block is one coordinate and the rule is
    `scale_by_adagrad`'s, with the same `initial_accumulator_value`, `eps`
    and `eps_root`. A block sees rotations within it: with one block covering
    a leaf, the iterates on f(R x) are R^T times those on f(x), for any
    rotation R, which no diagonal rule achieves.

    Cost per leaf of n coordinates and block size b: memory 2 n b floats (G
    and the cached P; n b^2 / b^2 = n / b blocks of b^2); per step O(n b)
    for G += g g^T and P g; per refresh O(n b^2) for n / b eigendecompositions
    of b x b. b = 1 costs as much as diagonal Adagrad (plus a trivial cache);
    b = n is the full matrix of the paper: n^2 memory and n^3 work per refresh.

    Statistics are float32 (float64 for float64 parameters), also for
    bfloat16 and float16 parameters; the update comes back in the gradient's
    dtype. Complex parameters are refused at `init`.

    Args:
      block_size: the most coordinates per block (an int >= 1). Default 64.
        It fixes the state's shapes: under `optax.inject_hyperparams`, list it
        in ``static_args`` if `init` runs under `jax.jit`.
      {initial_accumulator_value}
        Here G starts at tau * I. Must be >= 0. Default 0.
      eps: added to the root's eigenvalues, outside the root (>= 0): Duchi et
        al.'s delta. Default 1e-8.
      eps_root: added to G under the root (>= 0). Default 0.
      preconditioner_every: refresh P every this many steps (an int >= 1).
        Default 1 (every step).
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is
      `ScaleByFullMatrixAdagradState`.

    Raises:
      ValueError, TypeError: at construction, for a `block_size` or
        `preconditioner_every` that is not an int >= 1, or an `eps`,
        `eps_root` or `initial_accumulator_value` that is negative, not finite
        or not a number (each message names the function, argument and value);
        at `init`, TypeError for integer, boolean or complex parameters; at
        trace time, ValueError for gradients whose tree differs from the
        state's or a statistic that is not a stack of square blocks fitting
        its gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_full_matrix_adagrad(block_size=2, eps=0.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([3.0, 4.0]), state)
      >>> u.round(6)   # G = g g^T has rank 1: P g = g / |g|
      Array([0.6, 0.8], dtype=float32)
      >>> u, state = tx.update(jnp.array([4.0, -3.0]), state)
      >>> u.round(6)   # G = 25 I now: P g = g / 5
      Array([ 0.8, -0.6], dtype=float32)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011 (Figure 2: full
      matrices, H_t = delta I + G_t^(1/2)).
    """
    caller = "scale_by_full_matrix_adagrad"
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        _full_matrix(
            caller, block_size, initial_accumulator_value, eps, eps_root, preconditioner_every
        ),
        skips_inside=False,
    )


def _full_matrix(
    caller, block_size, initial_accumulator_value, eps, eps_root, preconditioner_every
):
    checks.check_integer(caller, "block_size", block_size, low=1)
    checks.check_integer(caller, "preconditioner_every", preconditioner_every, low=1)
    checks.check_number(caller, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(caller, "eps", eps)
    checks.check_number(caller, "eps_root", eps_root)

    def init_fn(params):
        b_max = preconditioner.shape_argument(caller, "block_size", block_size)

        def leaf(path, p):
            if not hasattr(p, "shape"):
                p = jnp.asarray(p)
            dtype = preconditioner.statistics_dtype(caller, path, p.dtype)
            lay = blocks.layout(tuple(p.shape), b_max, flatten=True)
            assert lay is not None  # A flattened leaf always has one blocked dimension.
            (b,) = lay.blocks
            zeros = slots.placed_full(p, (lay.num_blocks, b, b), 0, dtype, replicate=True)
            eye = jnp.eye(b, dtype=dtype) * jnp.asarray(initial_accumulator_value, dtype)
            return blocks.LeafState(statistics=zeros + eye[None], preconditioners=zeros)

        state = blocks.per_leaf(leaf, params)
        return ScaleByFullMatrixAdagradState(
            count=preconditioner.placed_count(params),
            statistics=state.statistics,
            preconditioners=state.preconditioners,
        )

    def update_fn(updates, state, params=None):
        check_dense(caller, updates)
        trees.check_same_structure(caller, "updates", updates, "state.statistics", state.statistics)
        updates = jax.tree.map(jnp.asarray, updates)
        if params is not None:  # The blocks fix only each leaf's size; params fix its shape.
            trees.check_same_shapes(caller, "updates", updates, "params", params)
        blocks.check_statistics(caller, updates, state.statistics, flatten=True)

        def to_blocks(g, s):
            lay = blocks.layout_from_state(tuple(g.shape), (s,), flatten=True)
            return blocks.to_blocks(placement.replicated(g), lay, s.dtype)

        xs = jax.tree.map(to_blocks, updates, state.statistics)
        statistics = jax.tree.map(
            lambda x, s: s + jnp.einsum("ni,nj->nij", x, x, precision=preconditioner.HIGHEST),
            xs,
            state.statistics,
        )

        def recompute(stats, previous):
            flat, treedef = jax.tree.flatten(stats)
            new = preconditioner.refresh(
                jax.tree.leaves(previous), flat, [2] * len(flat), eps_root=eps_root, eps=eps
            )
            return jax.tree.unflatten(treedef, new)

        due = preconditioner.refresh_due(state.count, preconditioner_every)
        if due is True:
            preconditioners = recompute(statistics, state.preconditioners)
        else:
            preconditioners = jax.lax.cond(
                due, recompute, lambda s, p: p, statistics, state.preconditioners
            )

        def step(g, x, p):
            u = jnp.einsum("nij,nj->ni", p, x, precision=preconditioner.HIGHEST)
            lay = blocks.layout_from_state(tuple(g.shape), (p,), flatten=True)
            u = blocks.from_blocks(u, lay, tuple(g.shape)).astype(g.dtype)
            return placement.sharded_like(u, g)

        new_updates = jax.tree.map(step, updates, xs, preconditioners)
        return new_updates, ScaleByFullMatrixAdagradState(
            count=optax.safe_increment(state.count),
            statistics=statistics,
            preconditioners=preconditioners,
        )

    return optax.GradientTransformation(init_fn, update_fn)


@checks.checked_arguments
@shared_args
def full_matrix_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    block_size: int = 64,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    preconditioner_every: int = 1,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Full-matrix Adagrad on blocks of coordinates: adapts to rotated, correlated curvature.

    Each leaf is flattened (row-major) and cut into consecutive blocks of
    b = min(block_size, n) coordinates. For each block, at step t = 1, 2, ...
    (count = t - 1)::

        G_0     = initial_accumulator_value * I                  (tau I, at init)
        G_t     = G_{t-1} + g_t g_t^T                            (before use)
        P_t     = (sqrt(G_t + eps_root I) + eps I)^-1            (refreshed steps)
        u_t     = -lr(count) * P_t g_t
        w_{t+1} = w_t + u_t

    The inverse root comes from a symmetric eigendecomposition (float32;
    float64 for float64 parameters); eigenvalues that are zero to that
    precision get 0 (the pseudo-inverse), so a zero gradient or a singular G
    gives a finite update. P is refreshed every `preconditioner_every` steps
    (t = 1, 1 + k, ...) and cached in the state. `scale_by_full_matrix_adagrad`
    documents these details and the cost: per step O(n b) time, 2 n b floats
    of state per leaf of n coordinates, and O(n b^2) per refresh.

    With ``block_size=1`` this is `adagrad` with the same
    `initial_accumulator_value`, `eps` and `eps_root` (eps outside the root,
    eps_root inside, as there). With one block per leaf the iterates are
    rotation invariant.

    This is ``optax.chain(scale_by_full_matrix_adagrad(...),
    optax.scale_by_learning_rate(learning_rate))``.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      block_size: the most coordinates per block (an int >= 1). Default 64.
      {initial_accumulator_value}
        Here G starts at tau * I. Must be >= 0. Default 0.
      eps: added outside the root (>= 0), Duchi et al.'s delta. Default 1e-8.
      eps_root: added to G inside the root (>= 0). Default 0.
      preconditioner_every: refresh P every this many steps (an int >= 1).
        Default 1.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> tx = adagrad_jax.full_matrix_adagrad(learning_rate=0.1, block_size=4)
      >>> params = jnp.ones((2, 2))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.full((2, 2), 2.0), state)
      >>> optax.apply_updates(params, updates).round(6)   # w - 0.1 * g / |g|
      Array([[0.95, 0.95],
             [0.95, 0.95]], dtype=float32)
      >>> state[0].statistics.shape   # one 4 x 4 block
      (1, 4, 4)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.
    """
    caller = "full_matrix_adagrad"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _full_matrix(
                caller, block_size, initial_accumulator_value, eps, eps_root, preconditioner_every
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=False,
    )
