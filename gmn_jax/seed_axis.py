"""The seed axis: S >= 1 independent runs stacked on a leading axis.

Every stage works on stacked pytrees whose leaves carry a leading axis of S
independent runs (generator seeds, or generators in stage 2), so that one
code path serves one seed and many. `over_seeds` maps a per-run function
over that axis.

S = 1 is traced without `jax.vmap`: the axis is squeezed off, the function
runs unbatched and the axis is put back. A size-1 vmap is correct but
compiles to batched products that round differently from the unbatched
ones (a digits run drifts by about 5e-4 in its parameters after 250
iterations), and the one-seed program is what every result of a single
seed has always been; squeezing keeps it bit for bit.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp


def stack(trees: Sequence[Any]) -> Any:
  """Stacks pytrees of one structure along a new leading axis.

  Args:
    trees: the pytrees, one per run.

  Returns:
    One pytree whose leaves have a leading axis of len(trees).
  """
  return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Row `index` of every leaf of a stacked pytree.

  Args:
    tree: a stacked pytree (device or numpy leaves).
    index: the run.

  Returns:
    That run's pytree.
  """
  return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


def add_axis(tree: Any) -> Any:
  """A pytree of one run as a stack of one (leading axis of size 1).

  Args:
    tree: the pytree.

  Returns:
    The same leaves with a leading axis of 1.
  """
  return jax.tree_util.tree_map(lambda leaf: leaf[None], tree)


def shared_or_stacked(tree: Any, num_seeds: int) -> Optional[int]:
  """The `over_seeds` axis of an argument: None (shared) or 0 (one per run).

  Args:
    tree: a pytree of scalars shared by every run, or of (S,) arrays (a value
      per run, e.g. a hyperparameter grid trained as one program).
    num_seeds: S.

  Returns:
    None for scalars, 0 for (S,) arrays.

  Raises:
    ValueError: for leaves of any other shape.
  """
  shapes = {tuple(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)}
  if shapes == {()}:
    return None
  if shapes == {(num_seeds,)}:
    return 0
  raise ValueError(f"expected scalars or ({num_seeds},) arrays, found shapes {sorted(shapes)}")


def over_seeds(fn: Callable, num_seeds: int, in_axes: Sequence[Any]) -> Callable:
  """`fn` mapped over the leading seed axis of the arguments marked 0.

  Args:
    fn: a function of one run's arguments.
    num_seeds: S, the size of the seed axis.
    in_axes: per positional argument, 0 (stacked over seeds) or None (shared
      by every seed), as for `jax.vmap`.

  Returns:
    A function of the stacked arguments whose outputs carry a leading axis
    of S: `jax.vmap(fn, in_axes)` for S > 1; for S = 1 the unbatched call
    (see the module docstring).
  """
  in_axes = tuple(in_axes)
  if num_seeds > 1:
    return jax.vmap(fn, in_axes=in_axes)

  @functools.wraps(fn)  # The program keeps fn's name, as vmap's does.
  def one_seed(*args):
    args = [unstack(arg, 0) if axis == 0 else arg for arg, axis in zip(args, in_axes)]
    return add_axis(fn(*args))

  return one_seed
