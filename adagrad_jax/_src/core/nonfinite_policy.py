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

This module is the policy's one implementation; three places apply it:

- `keep_mask` decides, for a gradient, which entries take their step (the
  whole step's `all_finite` for "skip_step"). Everything below uses it.
- `skipping_rule` guards a leaf rule of the row engine (`tables/engine.py`).
  The diagonal family (adagrad, proximal_adagrad, adagrad_da, ftrl and their
  compat presets) skips there, after duplicate rows are summed, so that tables
  keep their O(k * D) in-place step.
- `wrap` wraps a whole transformation: the counter, the step-skip of the state
  and the zeroed updates of skipped entries. For the diagonal family
  (``skips_inside=True``) the engine has already kept the state of skipped
  entries; for the matrix family and AdaGrad-Norm ``wrap`` runs the rule on
  the gradient with skipped entries set to 0 and keeps their state itself.
- `packed_adagrad` (``diagonal/packed.py``) applies `keep_mask` and
  `count_nonfinite` to its flat buffers.

Core imports nothing else from the package, so it does not know the
`RowSparse` class of ``tables/``: a table gradient is recognised by duck
typing, as a leaf with ``indices`` and ``values`` that its own type rebuilds
from ``(indices, values)``, and the policy reads and masks its ``values`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, quantized
from adagrad_jax._src.core.numerics import per_row

NONFINITE_POLICIES = ("propagate", "skip_coordinate", "skip_step")


class NonfiniteState(NamedTuple):
    """State of an optimizer built with ``nonfinite="skip_coordinate"`` or ``"skip_step"``.

    Attributes:
      nonfinite_steps: int32 number of steps whose gradient had a NaN or inf
        entry (skipped whole with "skip_step", in part with "skip_coordinate").
      inner_state: the optimizer's usual state.
    """

    nonfinite_steps: jax.Array
    inner_state: Any


def check(caller: str, nonfinite: Any) -> str:
    """Checks the ``nonfinite`` argument; returns it."""
    checks.check_choice(caller, "nonfinite", nonfinite, NONFINITE_POLICIES)
    return nonfinite


# --- what a policy skips -----------------------------------------------------


def _is_table(x: Any) -> bool:
    """True for a table gradient (a `RowSparse`, known here by its two fields)."""
    return hasattr(x, "indices") and hasattr(x, "values")


def all_finite(updates: Any) -> jax.Array:
    """True if every entry of every leaf (the values of a table gradient) is finite."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(updates, is_leaf=_is_table):
        values = leaf.values if _is_table(leaf) else jnp.asarray(leaf)
        ok = ok & jnp.all(jnp.isfinite(values))
    return ok


def keep_mask(g: Any, nonfinite: str, step_ok: Any, *, row_wise: bool = False) -> jax.Array:
    """Where the entries of the gradient `g` take their step under a skip policy.

    Args:
      g: one gradient array (a dense leaf, or a table gradient's values).
      nonfinite: "skip_coordinate" or "skip_step".
      step_ok: `all_finite` of the whole step's gradients (read by "skip_step").
      row_wise: with "skip_coordinate", one answer per row (shape ``g.shape[:1]``):
        a row keeps its step only if all its entries are finite, because a
        row-wise accumulator is shared by the row.

    Returns:
      "skip_step": `step_ok`, a scalar for every entry. "skip_coordinate":
      ``isfinite(g)`` (per row with `row_wise`).
    """
    if nonfinite == "skip_step":
        return step_ok
    finite = jnp.isfinite(g)
    if row_wise and jnp.ndim(g) > 1:
        return jnp.all(finite, axis=tuple(range(1, jnp.ndim(g))))
    return finite


def keep_or_zero(keep: Any, x: Any) -> jax.Array:
    """`x` where `keep`, 0 elsewhere (a skipped entry's gradient or update)."""
    return jnp.where(keep, x, jnp.zeros((), jnp.asarray(x).dtype))


def keep_or_old(keep: Any, new: Any, old: Any) -> jax.Array:
    """`new` where `keep`, `old` elsewhere (a skipped entry's state)."""
    return jnp.where(keep, new, old)


def count_nonfinite(nonfinite_steps: jax.Array, step_ok: jax.Array) -> jax.Array:
    """The counter after a step: one more if the step met a non-finite entry."""
    return jnp.where(step_ok, nonfinite_steps, optax.safe_increment(nonfinite_steps))


# --- the row engine's leaf rules ---------------------------------------------


def skipping_rule(
    rule: Callable[..., Any], nonfinite: str, *, row_wise: bool, step_ok: Any, stacked: bool = False
) -> Callable[..., Any]:
    """`rule` under a non-finite policy (`map_rule`'s ``nonfinite``).

    "skip_coordinate": where a (summed) gradient entry is NaN or +-inf, that
    coordinate (with ``row_wise``, that row: its accumulator is shared) keeps
    its state and gets a zero update. "skip_step": every coordinate does, if
    any entry of the step's gradient tree is not finite (`step_ok` False).
    The rule sees the gradient with the skipped entries set to 0. With
    `stacked` the written slots hold their slots on a last axis, which the
    keep-mask covers too.
    """
    if nonfinite == "propagate":
        return rule

    def guarded(g, slots, w, *rounder):
        keep_slot = keep_mask(g, nonfinite, step_ok, row_wise=row_wise)
        # Row-wise, the state's mask has one entry per row: (k,) -> (k, 1, ...) covers g.
        keep = per_row(keep_slot, g.ndim) if row_wise else keep_slot
        u, new_slots = rule(keep_or_zero(keep, g), slots, w, *rounder)
        keep_state = keep_slot[..., None] if stacked else keep_slot

        def restore(new, old):
            if not quantized.is_int8(old):
                return keep_or_old(keep_state, new, old)
            # An 8-bit block is coded as a whole: a skipped coordinate took a zero
            # gradient and is requantized with its block; a skipped step keeps all.
            if nonfinite == "skip_coordinate":
                return new
            keep_all = jnp.all(keep_state)
            return jax.tree.map(lambda n, o: keep_or_old(keep_all, n, o), new, old)

        new_slots = tuple(restore(new, old) for new, old in zip(new_slots, slots))
        return keep_or_zero(keep, u), new_slots

    return guarded


# --- whole transformations ---------------------------------------------------


def _map_values(f: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """`jax.tree.map` that applies `f` to the values of each table gradient (ids kept)."""

    def leaf(x, *r):
        if _is_table(x):
            return type(x)(x.indices, f(x.values, *(y.values for y in r)))
        return f(x, *r)

    return jax.tree.map(leaf, tree, *rest, is_leaf=_is_table)


def wrap(
    caller: str,
    nonfinite: str,
    inner: optax.GradientTransformation,
    *,
    skips_inside: bool,
    tables_inside: bool = False,
) -> optax.GradientTransformation:
    """`inner` under the policy `nonfinite`; `inner` itself with "propagate".

    A step of the result: `inner` runs (on the gradient with skipped entries
    set to 0, unless it skips inside); then the skipped entries' updates are
    set to 0, whatever a later stage of a chain added (Keras' decoupled decay
    moves every coordinate); with "skip_step" a skipped step keeps the state;
    and ``nonfinite_steps`` counts the step if it met a non-finite entry.

    Args:
      caller: the public name, for messages.
      nonfinite: a checked policy.
      inner: the optimizer's transform, built with the same policy.
      skips_inside: True where `inner` already keeps the state and zeroes the
        update of skipped entries (the diagonal family, through the row
        engine's `skipping_rule`, on summed table rows). `wrap` then restores
        only the scalar state (step counts) of a skipped step, which costs no
        pass over the tables, and leaves a table's update rows (deduplicated,
        not the gradient's rows) to the engine. False: `wrap` applies the
        whole policy.
      tables_inside: with ``skips_inside=False``, whether `inner` applies
        "skip_coordinate" to table gradients itself, on their summed rows
        (SM3, whose dense leaves `wrap` handles; a table's update rows are
        not its gradient's, so `wrap` could not mask them): `wrap` then
        leaves table gradients and their updates to `inner`, and still
        applies "skip_step".
    """
    if nonfinite == "propagate":
        return inner

    def init_fn(params):
        return NonfiniteState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None):
        if not isinstance(state, NonfiniteState):
            raise TypeError(
                f"{caller}(nonfinite={nonfinite!r}): the state is a"
                f" {type(state).__name__}, not the NonfiniteState that init returns with"
                " this policy. Pass the state that tx.init returned."
            )
        step_ok = all_finite(updates)
        if skips_inside:
            inner_grads = updates
        else:
            inner_grads = jax.tree.map(
                lambda g: (
                    g
                    if tables_inside and _is_table(g)
                    else _map_values(lambda v: keep_or_zero(keep_mask(v, nonfinite, step_ok), v), g)
                ),
                updates,
                is_leaf=_is_table,
            )
        new_updates, new_inner = inner.update(inner_grads, state.inner_state, params)
        new_updates = _zero_skipped_updates(
            nonfinite, step_ok, new_updates, updates, tables_done=skips_inside or tables_inside
        )
        if nonfinite == "skip_step":
            new_inner = jax.tree.map(
                lambda new, old: (
                    keep_or_old(step_ok, new, old)
                    if not skips_inside or jnp.ndim(new) == 0
                    else new
                ),
                new_inner,
                state.inner_state,
            )
        count = count_nonfinite(state.nonfinite_steps, step_ok)
        return new_updates, NonfiniteState(count, new_inner)

    return optax.GradientTransformation(init_fn, update_fn)


def _zero_skipped_updates(
    nonfinite: str, step_ok: jax.Array, new_updates: Any, grads: Any, *, tables_done: bool
) -> Any:
    """`new_updates` with 0 where `grads` (the step's input) skips.

    With `tables_done`, a table's update holds the engine's deduplicated rows,
    which are not the gradient's rows: the engine zeroed its skipped rows, and
    only a skipped step remains to be applied to them.
    """

    def leaf(u, g):
        if _is_table(u):
            if tables_done and nonfinite == "skip_coordinate":
                return u
            keep = step_ok if tables_done else keep_mask(g.values, nonfinite, step_ok)
            return type(u)(u.indices, keep_or_zero(keep, u.values))
        return keep_or_zero(keep_mask(g, nonfinite, step_ok), u)

    return jax.tree.map(leaf, new_updates, grads, is_leaf=_is_table)
