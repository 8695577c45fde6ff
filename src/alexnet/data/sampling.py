"""Which sample indices a rank sees in an epoch, and in which batches.

Train: one permutation per epoch drawn from (seed, epoch), the same on every rank; it is
padded by wrapping around to a multiple of world_size and rank r takes every
world_size-th index from r (DistributedSampler's scheme), so ranks get equal shares.
Batches drop the last partial one, unless that would leave no batch at all.

Val: rank r takes r, r + world_size, ... in order, without padding, so per-rank counts
summed over ranks cover every sample exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed for torch.Generator from any integers (seed, epoch, rank, ...)."""
    state = np.random.SeedSequence([p & _MASK64 for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochSampler:
    """This rank's sample indices per epoch, cut into batches."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n < 1:
            raise ValueError("cannot sample from an empty split")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = math.ceil(n / world_size) if train else len(range(rank, n, world_size))
        self.drop_last = train and self.per_rank >= batch_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.per_rank

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, int64 on the CPU."""
        if not self.train:
            return torch.arange(self.n)[self.rank :: self.world_size]
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        total = self.per_rank * self.world_size
        if total > self.n:
            reps = math.ceil(total / self.n)
            perm = perm.repeat(reps)[:total]
        return perm[self.rank : total : self.world_size]

    def batches(self, epoch: int) -> list[torch.Tensor]:
        idx = self.indices(epoch)
        cut = len(self) * self.batch_size if self.drop_last else len(idx)
        return list(idx[:cut].split(self.batch_size))


class EpochLoader:
    """What the training loop asks of a loader, on top of its ``sampler`` (an EpochSampler):
    ``len`` (batches per epoch on this rank), ``num_samples`` and ``set_epoch``."""

    sampler: EpochSampler
    epoch: int = 0
    start_batch: int = 0

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        return self.sampler.num_samples

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reseed shuffling and augmentation from (seed, epoch); iteration then starts at batch
        ``start_batch`` of that epoch (a resumed run), with the same batches it would have had."""
        self.epoch, self.start_batch = epoch, start_batch


def round_robin_head(targets, n: int | None) -> np.ndarray:
    """Positions of the first ``n`` samples taken round-robin over the classes (in class order,
    each class in its stored order), so that a subset keeps every class; all when n is None."""
    targets = np.asarray(targets)
    if n is None or n >= len(targets):
        return np.arange(len(targets))
    order = np.argsort(targets, kind="stable")
    sorted_t = targets[order]
    starts = np.searchsorted(sorted_t, sorted_t, side="left")
    depth = np.arange(len(targets)) - starts  # rank of each sample within its class
    chosen = order[np.lexsort((sorted_t, depth))][:n]
    return chosen


# The validation split is a property of the dataset, not of the run: every seed, rank and
# resumed run keeps the same images apart, so runs compare on the same images.
VAL_SPLIT_SEED = 20120


def stratified_split(labels: torch.Tensor, n: int, seed: int = VAL_SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): ``n`` of ``labels``' positions kept apart, each class in
    its share of the whole (largest remainders round), chosen at random from ``seed``; both in
    ascending order."""
    labels = torch.as_tensor(labels).reshape(-1)
    if not 0 < n < len(labels):
        raise ValueError(f"cannot keep {n} of {len(labels)} samples apart")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / len(labels)
    take = exact.floor().long()
    short = n - int(take.sum())
    if short:  # the classes with the largest remainders get one more each
        order = torch.argsort(exact - take, descending=True, stable=True)
        take[order[:short]] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == c).reshape(-1)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val = torch.cat(chosen).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).reshape(-1), val
