"""What every optimizer of the package does with NaN and inf gradients: `nonfinite`.

One NaN or inf in one coordinate's gradient poisons that coordinate's
accumulator for good (every later step of it is NaN, or 0). Each constructor
takes ``nonfinite``:

- ``"propagate"`` (default): the rule as written, like optax, PyTorch and
  Keras. A NaN gradient gives NaN state and parameters at once, so the loss
  shows the bug at the step that caused it; nothing is added to the step.
- ``"skip_coordinate"``: a coordinate whose gradient entry is NaN or +-inf
  keeps its state and its parameter; the others take their step.
- ``"skip_step"``: if any gradient entry is not finite, the whole step is
  skipped: every state array (step counts included) and every parameter
  stays as it was, as with ``optax.apply_if_finite``.

With a skip policy the state is a `NonfiniteState` around the usual one, whose
``nonfinite_steps`` counts the steps that met a non-finite gradient entry.

The diagonal family (adagrad, proximal_adagrad, adagrad_da, ftrl and their
compat presets) skips inside the row engine (`adagrad_jax._rows._engine`), so
tables keep their O(k * D) in-place step. `wrap` does the rest: the counter,
the step counts, and the whole rule for the matrix family and AdaGrad-Norm,
which it runs on the gradient with skipped entries set to 0 and whose update
it zeroes there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks
from adagrad_jax._src.core.numerics import per_row
from adagrad_jax._src.tables.row_sparse import RowSparse, is_row_sparse


class NonfiniteState(NamedTuple):
    """State of an optimizer built with ``nonfinite="skip_coordinate"`` or ``"skip_step"``.

    Attributes:
      nonfinite_steps: int32 number of steps whose gradient had a NaN or inf
        entry (skipped whole with "skip_step", in part with "skip_coordinate").
      inner_state: the optimizer's usual state.
    """

    nonfinite_steps: jax.Array
    inner_state: Any


def check(fn: str, nonfinite: Any) -> str:
    """Checks the ``nonfinite`` argument; returns it."""
    checks.check_choice(fn, "nonfinite", nonfinite, NONFINITE_POLICIES)
    return nonfinite


def _map_values(f: Any, tree: Any, *rest: Any) -> Any:
    """`jax.tree.map` that applies `f` to the values of each RowSparse (ids kept)."""

    def leaf(x, *r):
        if is_row_sparse(x):
            return RowSparse(x.indices, f(x.values, *(y.values for y in r)))
        return f(x, *r)

    return jax.tree.map(leaf, tree, *rest, is_leaf=is_row_sparse)


def wrap(
    fn: str,
    nonfinite: str,
    inner: optax.GradientTransformation,
    *,
    skips_inside: bool,
) -> optax.GradientTransformation:
    """`inner` under the policy `nonfinite`; `inner` itself unless it skips.

    Args:
      fn: the public name, for messages.
      nonfinite: a checked policy.
      inner: the optimizer's transform, built with the same policy.
      skips_inside: True where `inner` already keeps the state and zeroes the
        update of skipped coordinates (the diagonal family, through the row
        engine); `wrap` then only restores the scalar state (step counts) on
        skipped steps and counts them. False: `wrap` applies the whole policy.
    """
    if nonfinite == "propagate":
        return inner

    def init_fn(params):
        inner_state = inner.init(params)
        return NonfiniteState(jnp.zeros([], jnp.int32), inner_state)

    def update_fn(updates, state, params=None):
        if not isinstance(state, NonfiniteState):
            raise TypeError(
                f"{fn}(nonfinite={nonfinite!r}): the state is a"
                f" {type(state).__name__}, not the NonfiniteState that init returns with"
                " this policy. Pass the state that tx.init returned."
            )
        ok = all_finite(updates)
        if skips_inside:
            new_updates, new_inner = inner.update(updates, state.inner_state, params)
        else:
            keep = ok if nonfinite == "skip_step" else None

            def clean(g):
                mask = jnp.isfinite(g) if keep is None else keep
                return jnp.where(mask, g, jnp.zeros((), g.dtype))

            cleaned = _map_values(clean, updates)
            new_updates, new_inner = inner.update(cleaned, state.inner_state, params)

            def zero_skipped(u, g):
                mask = jnp.isfinite(g) if keep is None else keep
                return jnp.where(mask, u, jnp.zeros((), u.dtype))

            new_updates = _map_values(zero_skipped, new_updates, updates)
            if nonfinite == "skip_step":
                new_inner = jax.tree.map(
                    lambda new, old: jnp.where(ok, new, old), new_inner, state.inner_state
                )
        if skips_inside and nonfinite == "skip_step":
            # The engine kept every array of the rule; counts (and a schedule's
            # count) are scalars outside it. A later stage of a chain (Keras'
            # decoupled decay) may have moved the update: zero it.
            new_inner = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old) if jnp.ndim(new) == 0 else new,
                new_inner,
                state.inner_state,
            )
            new_updates = _map_values(
                lambda u: jnp.where(ok, u, jnp.zeros((), u.dtype)), new_updates
            )
        elif skips_inside:
            # Dense leaves: zero skipped coordinates whatever a later stage added
            # (RowSparse updates hold deduplicated rows; the engine zeroed them).
            new_updates = jax.tree.map(
                lambda u, g: (
                    u
                    if is_row_sparse(u)
                    else jnp.where(jnp.isfinite(g), u, jnp.zeros((), jnp.asarray(u).dtype))
                ),
                new_updates,
                updates,
                is_leaf=is_row_sparse,
            )
        count = state.nonfinite_steps
        count = jnp.where(ok, count, optax.safe_increment(count))
        return new_updates, NonfiniteState(count, new_inner)

    return optax.GradientTransformation(init_fn, update_fn)


NONFINITE_POLICIES = ("propagate", "skip_coordinate", "skip_step")


def all_finite(updates: Any) -> jax.Array:
    """True if every entry of every leaf (the values of a RowSparse) is finite."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(updates, is_leaf=is_row_sparse):
        values = leaf.values if is_row_sparse(leaf) else jnp.asarray(leaf)
        ok = ok & jnp.all(jnp.isfinite(values))
    return ok


def skipping_rule(
    rule: Callable[..., Any], nonfinite: str, row_wise: bool, step_ok: Any
) -> Callable[..., Any]:
    """`rule` under a non-finite policy (`map_rule`'s ``nonfinite``).

    "skip_coordinate": where a (summed) gradient entry is NaN or +-inf, that
    coordinate (with ``row_wise``, that row: its accumulator is shared) keeps
    its state and gets a zero update. "skip_step": every coordinate does, if
    any entry of the step's gradient tree is not finite (`step_ok` False).
    The rule sees the gradient with the skipped entries set to 0.
    """
    if nonfinite == "propagate":
        return rule

    def guarded(g, slots, w):
        if nonfinite == "skip_step":
            keep = keep_slot = step_ok
        elif row_wise:
            finite = jnp.isfinite(g)
            keep_slot = jnp.all(finite, axis=tuple(range(1, g.ndim))) if g.ndim > 1 else finite
            keep = per_row(keep_slot, g.ndim)
        else:
            keep = keep_slot = jnp.isfinite(g)
        u, new_slots = rule(jnp.where(keep, g, jnp.zeros((), g.dtype)), slots, w)
        new_slots = tuple(jnp.where(keep_slot, new, old) for new, old in zip(new_slots, slots))
        return jnp.where(keep, u, jnp.zeros((), u.dtype)), new_slots

    return guarded
