"""A device-side model of the reference code's epoch iterators, with padded batches.

The authors' PyTorch code (mbsariyildiz/gmn-zsl @ e44b89f) draws every batch of
stage 1 from `data.Iterator` (`src/data/iterator.py`), an endless epoch
iterator. Its rules, as used by `src/main.py` (all with the defaults
`allow_smaller=True, continuous=True`):

1. Tiling (iterator.py:31-34): while the n items are fewer than the batch
   size B, the whole item list is concatenated with itself (n doubles). An
   epoch thus has `tiled_size(n, B)` = n·2^k slots, k the least with
   n·2^k >= B, and slot p holds item p mod n: each item appears 2^k times
   per epoch, and a batch of a tiled list can repeat an item.
2. Order (iterator.py:54-61): each epoch a fresh random permutation of the
   slots (`torch.randperm`); with sampling weights instead `size` i.i.d.
   multinomial draws with replacement (shuffling is off then, :20).
3. Batches (iterator.py:63-73, 46-49): `order[s : s + B]`, then s += B. A new
   epoch (a new order) starts, lazily at the next call, once s >= size, so
   every epoch ends with one short batch of size % B slots when that is not 0.
4. The iterators (main.py:98-106, 122-127):
   * critic, `xy_iter`: over the seen trainval examples, batch B, weights
     w_i = 1/n_{y_i} (iterator.py:76-83, i.e. class-balanced with
     replacement) except for SUN (plain shuffling). E.g. CUB 7057 examples:
     27 batches of 256, then 145.
   * adversarial labels, `label_iter`: over the seen classes 0..S-1, batch B
     (used at main.py:254): CUB 150 -> 300 slots: 256, 44; SUN 645: 256, 256,
     133; AWA1 40 -> 320: 256, 64.
   * class cycle, `class_iter`: over 0..S-1, batch 1 (main.py:106): a
     shuffled cycle; the GM loop (main.py:284-286) takes `n_gm_iter` classes
     per generator iteration from it, one at a time, and the cycle runs on
     across iterations. When it ends mid-iteration a new permutation starts
     there, so an iteration's classes can repeat (only when S is not a
     multiple of n_gm_iter, e.g. SUN 645 / 20).
   * GM real batches, `per_class_iters[c]`: one iterator per seen class over
     its trainval examples, batch `per_class_batch_size`, advanced only when
     class c is drawn (main.py:286). CUB 47 examples, batch 60 -> 94 slots:
     60, 34, 60, 34, ... The fakes are `gm_fake_repeat` x the real batch's
     size (`y_real.repeat(...)`, main.py:287).
   * Not modelled: with `clf_reset_iter > 1` the classifier's SGD step also
     draws from `xy_iter` (main.py:350); the released configs use 1.

Here each iterator is an `EpochIterator`, a pytree of int32 arrays (fit for a
`lax.scan` carry, `vmap` over seeds and checkpoints). A batch is returned at
its full size B with a mask that is False on the slots past the epoch's end;
pass the mask to the `mask` arguments of `gmn_jax.losses` (and of
`gram_gradient_matching`), which then average over the valid rows only.
Iterators start exhausted, so the first call draws the first order: every
random choice comes from the key of the call, and a run resumed from a saved
state with the same per-iteration keys repeats an uninterrupted one. The
PyTorch RNG itself is not reproduced, only these rules.
"""

from typing import NamedTuple, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp

from gmn_jax.data import samplers


class EpochIterator(NamedTuple):
  """The state of one reference iterator (or of several, stacked on a leading axis).

  Attributes:
    order: (P,) int32 item of each slot of the current epoch (slots past
      `size` hold 0); P >= size is the static capacity. (1,), never read,
      for a class-balanced iterator, whose draws are i.i.d. (not (0,):
      orbax refuses to checkpoint an empty array).
    position: () int32 slots served so far in the current epoch (>= size:
      exhausted, the next call starts a new epoch).
    size: () int32 slots per epoch, `tiled_size(num_items, batch_size)`.
    num_items: () int32 number of distinct items.
  """

  order: jax.Array
  position: jax.Array
  size: jax.Array
  num_items: jax.Array


class ReferenceSampler(NamedTuple):
  """The iterators of stage 1 (main.py:98-127).

  Attributes:
    critic: over the training examples (critic batches).
    labels: over the generated classes (the adversarial batch's labels).
    class_cycle: over the rows of the class index, batch 1 (GM classes).
    class_batches: one iterator per class-index row (GM real batches),
      stacked: order (C, P), the rest (C,).
  """

  critic: EpochIterator
  labels: EpochIterator
  class_cycle: EpochIterator
  class_batches: EpochIterator


def tiled_size(num_items, batch_size: int):
  """Slots per epoch: num_items doubled until it reaches batch_size (iterator.py:31-34).

  Args:
    num_items: the number of items (>= 1), a Python int or an int array.
    batch_size: the static batch size.

  Returns:
    num_items·2^k with k the least such that it is >= batch_size (a Python
    int for a Python int, else an int32 array of the same shape).
  """
  if isinstance(num_items, int):
    size = num_items
    while size < batch_size:
      size *= 2
    return size
  size = jnp.asarray(num_items, jnp.int32)
  # k <= bit_length(batch_size) doublings suffice for any size >= 1.
  for _ in range(max(batch_size, 1).bit_length()):
    size = jnp.where(size < batch_size, 2 * size, size)
  return size


def _shuffled_order(key, size, num_items, capacity: int) -> jax.Array:
  """A uniformly random order of the slots 0..size-1 (as items), padded to capacity."""
  slots = jnp.arange(capacity, dtype=jnp.int32)
  live = slots < size
  # Padding gets the largest key; the stable sort puts it after every live
  # slot even on a tie, so the first `size` entries permute the live slots.
  # (Ties between live slots, about size²/2^33 per shuffle, keep slot order.)
  bits = jnp.where(live, jax.random.bits(key, (capacity,), jnp.uint32),
                   jnp.uint32(0xFFFFFFFF))
  permutation = jnp.argsort(bits, stable=True).astype(jnp.int32)
  return jnp.where(live, permutation % num_items, 0)


def init_epoch_iterator(num_items, batch_size: int,
                        capacity: Optional[int] = None) -> EpochIterator:
  """An exhausted iterator over num_items items: its first call draws the first epoch.

  Args:
    num_items: the number of items (>= 1), a Python int, or an int32 scalar
      (possibly traced) when `capacity` is given.
    batch_size: the static batch size (decides the tiling).
    capacity: static length of `order`, at least the tiled size; None: the
      tiled size itself (needs a Python int num_items).

  Returns:
    The `EpochIterator`.
  """
  if capacity is None:
    capacity = tiled_size(int(num_items), batch_size)
  size = tiled_size(jnp.asarray(num_items, jnp.int32), batch_size)
  return EpochIterator(order=jnp.zeros((capacity,), jnp.int32), position=size, size=size,
                       num_items=jnp.asarray(num_items, jnp.int32))


def next_batch(state: EpochIterator, key, batch_size: int
               ) -> Tuple[EpochIterator, jax.Array, jax.Array]:
  """The next batch of a shuffled iterator (iterator.py:63-73).

  Args:
    state: the iterator (unstacked).
    key: PRNG key, used only when the call starts a new epoch (derive it
      from the iteration's key, e.g. with fold_in).
    batch_size: the static batch size the iterator was built for.

  Returns:
    (new state, items (batch_size,) int32, mask (batch_size,) bool). The
    first mask.sum() entries are the batch (fewer than batch_size only at an
    epoch's end); the padding entries hold a valid item.
  """
  capacity = state.order.shape[-1]
  exhausted = state.position >= state.size
  order = lax.cond(exhausted,
                   lambda: _shuffled_order(key, state.size, state.num_items, capacity),
                   lambda: state.order)
  position = jnp.where(exhausted, 0, state.position)
  slots = position + jnp.arange(batch_size, dtype=jnp.int32)
  mask = slots < state.size
  items = order[jnp.where(mask, slots, 0)]
  return state._replace(order=order, position=position + batch_size), items, mask


def _next_class_balanced_batch(state, key, class_index, batch_size):
  """A critic batch of i.i.d. class-balanced draws; the epoch only sets its length."""
  position = jnp.where(state.position >= state.size, 0, state.position)
  mask = position + jnp.arange(batch_size, dtype=jnp.int32) < state.size
  indices = samplers.class_balanced_indices(key, class_index, batch_size)
  return state._replace(position=position + batch_size), indices, mask


def init_critic_iterator(num_examples: int, batch_size: int,
                         class_balanced: bool) -> EpochIterator:
  """The critic's `xy_iter` (main.py:98-104).

  Args:
    num_examples: N, the static number of training examples.
    batch_size: B.
    class_balanced: weights 1/n_y (i.i.d. draws, no order kept) or plain
      shuffling.

  Returns:
    The `EpochIterator` (order (1,), unused, when class-balanced).
  """
  return init_epoch_iterator(num_examples, batch_size, 1 if class_balanced else None)


def next_critic_batch(state: EpochIterator, key, class_index: samplers.ClassIndex,
                      batch_size: int, class_balanced: bool
                      ) -> Tuple[EpochIterator, jax.Array, jax.Array]:
  """The next critic batch.

  Class-balanced: batch_size i.i.d. draws with p(i) ∝ 1/n_{y_i} (the
  reference's multinomial, iterator.py:56-57), of which the last batch of
  each epoch of tiled_size(N, B) draws keeps only the remainder. Otherwise
  a shuffled epoch of the N examples (each exactly once, tiled if N < B).

  Args:
    state: from `init_critic_iterator` with the same class_balanced.
    key: PRNG key (the draws, or a new epoch's order).
    class_index: the class index over the N examples.
    batch_size: B.
    class_balanced: static, as at init.

  Returns:
    (new state, example indices (B,) int32, mask (B,) bool).
  """
  if class_balanced:
    return _next_class_balanced_batch(state, key, class_index, batch_size)
  return next_batch(state, key, batch_size)


def init_class_batches(class_index: samplers.ClassIndex, batch_size: int) -> EpochIterator:
  """One exhausted iterator per class-index row, stacked (main.py:122-127).

  Works under jit: the capacity comes from the static `class_index.max_count`
  (a tiled class has fewer than 2·batch_size slots).

  Args:
    class_index: the classes and their examples.
    batch_size: the static real batch size per class (per_class_batch_size).

  Returns:
    An `EpochIterator` with order (C, P) and (C,) position, size, num_items.
  """
  capacity = max(class_index.max_count, 2 * batch_size - 1)
  counts = jnp.asarray(class_index.counts, jnp.int32)
  return jax.vmap(lambda n: init_epoch_iterator(n, batch_size, capacity))(counts)


def init_class_cycle(num_classes: int) -> EpochIterator:
  """The GM class cycle `class_iter` (main.py:106): batch 1 over num_classes rows."""
  return init_epoch_iterator(num_classes, 1)


def next_gm_batches(class_cycle: EpochIterator, class_batches: EpochIterator, key,
                    class_index: samplers.ClassIndex, num_classes: int, batch_size: int):
  """One generator iteration's GM draws: num_classes classes and their real batches.

  As main.py:284-286, one class at a time: the next class c of the cycle,
  then the next batch of c's own iterator (so a class drawn twice in one
  iteration, across a cycle's end, gets two successive batches).

  Args:
    class_cycle: from `init_class_cycle(class_index.num_classes)`.
    class_batches: from `init_class_batches(class_index, batch_size)`.
    key: PRNG key of this iteration's GM draws.
    class_index: the classes and their examples.
    num_classes: static n, classes per generator iteration (n_gm_iter).
    batch_size: static r, the real batch size per class.

  Returns:
    (class_cycle, class_batches, classes (n,) int32 ids from
    class_index.classes, example indices (n, r) int32, mask (n, r) bool).
    Row j holds examples of classes[j]; its first mask[j].sum() entries are
    the batch, the padding repeats valid examples of the class.
  """
  members = jnp.asarray(class_index.members)
  starts = jnp.asarray(class_index.starts)

  def one_class(carry, step_key):
    cycle, batches = carry
    cycle_key, batch_key = jax.random.split(step_key)
    cycle, rows, _ = next_batch(cycle, cycle_key, 1)
    row = rows[0]
    state = jax.tree_util.tree_map(lambda leaf: leaf[row], batches)
    state, items, mask = next_batch(state, batch_key, batch_size)
    batches = jax.tree_util.tree_map(lambda leaves, leaf: leaves.at[row].set(leaf), batches,
                                     state)
    return (cycle, batches), (row, members[starts[row] + items], mask)

  (class_cycle, class_batches), (rows, indices, mask) = lax.scan(
      one_class, (class_cycle, class_batches), jax.random.split(key, num_classes))
  classes = jnp.asarray(class_index.classes, jnp.int32)[rows]
  return class_cycle, class_batches, classes, indices, mask


def repeated_mask(mask: jax.Array, repeat: int) -> jax.Array:
  """The fake batches' mask: `repeat` fakes per valid real row (main.py:287).

  Args:
    mask: (..., r) bool masks of real batches.
    repeat: static gm_fake_repeat f.

  Returns:
    (..., f·r) bool, the first f·mask.sum(-1) entries of each row True.
  """
  counts = jnp.sum(mask, axis=-1, keepdims=True, dtype=jnp.int32)
  return jnp.arange(repeat * mask.shape[-1], dtype=jnp.int32) < repeat * counts


def init_reference_sampler(class_index: samplers.ClassIndex, num_examples: int,
                           num_label_classes: int, *, batch_size: int,
                           gm_real_per_class: int, class_balanced: bool) -> ReferenceSampler:
  """Every stage-1 iterator, exhausted (a constant: the first calls draw the orders).

  Args:
    class_index: the seen classes and their training examples.
    num_examples: N, the static number of training examples.
    num_label_classes: static number of classes the adversarial labels run
      over (S, or S + U when transductive).
    batch_size: B of the critic and adversarial batches.
    gm_real_per_class: r, the real batch size per GM class.
    class_balanced: whether the critic draws class-balanced.

  Returns:
    The `ReferenceSampler`.
  """
  return ReferenceSampler(
      critic=init_critic_iterator(num_examples, batch_size, class_balanced),
      labels=init_epoch_iterator(num_label_classes, batch_size),
      class_cycle=init_class_cycle(class_index.num_classes),
      class_batches=init_class_batches(class_index, gm_real_per_class))
