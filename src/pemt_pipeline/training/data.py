"""Training batches: a sampler over videos (content-aware or random batches, DDP-sliced, resumable).

A batch order is a function of (seed, epoch), so a resumed run sees the same batches; the items
themselves come from `pemt_pipeline.features.dataset`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from pemt_pipeline.features.dataset import make_generator

VARIANTS = ("content", "random")


class VideoBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset (video) indices; `batch_size` is the GLOBAL batch size.

    variant "content": each batch is `negative_sampler.video_batch(batch_size)`, so its members are
    each other's content-aware negatives (in-batch MEP negatives, CPP mismatches); its video
    indices must be the dataset's (the same manifest, in the same order). The batches of
    an epoch follow from the negative sampler's state at the epoch's start (saved in
    `state_dict`); nothing else may draw from that sampler meanwhile.
    variant "random": the epoch's order is a chain of random permutations of the videos drawn
    from (seed, epoch), cut into batches: with batches_per_epoch <= n_videos // batch_size every
    video appears at most once per epoch (exactly once when equal).
    DDP: every rank draws the same global batch and yields its contiguous slice
    [rank * b, (rank + 1) * b), b = batch_size // world_size.
    Resume: `state_dict()` holds (epoch, batches done in it); after `load_state_dict` the next
    iteration continues with the remaining batches of that epoch.
    Refreshed negatives (content): `replace_negatives` draws the rest of the epoch from a new
    negative sampler; the state then holds that sampler's start and the batch it took over at.
    """

    def __init__(self, n_videos: int, batch_size: int, variant: str = "random",
                 negative_sampler=None, batches_per_epoch: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}, expected one of {VARIANTS}")
        if variant == "content" and negative_sampler is None:
            raise ValueError("variant 'content' needs a negative_sampler")
        if not 1 <= batch_size <= n_videos:
            raise ValueError(f"batch_size {batch_size} must be in [1, n_videos={n_videos}]")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"global batch_size {batch_size} must be divisible by world_size "
                             f"{world_size}, and 0 <= rank {rank} < world_size")
        self.n_videos, self.batch_size, self.variant = n_videos, batch_size, variant
        self.negative_sampler, self.seed, self.rank = negative_sampler, seed, rank
        self.local_size = batch_size // world_size
        self.batches_per_epoch = batches_per_epoch or max(1, n_videos // batch_size)
        self.epoch = 0
        self.position = 0  # batches of this epoch yielded so far
        self._start = 0  # where the next iteration starts (set by load_state_dict)
        self._sampler_state = None  # negative sampler state at this epoch's start (content)
        self._origin = 0  # content: the batch of this epoch from which `_sampler_state` draws (a refresh's)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: a new one starts at its first batch, the same one keeps its resume
        point (so load_state_dict then set_epoch(state["epoch"]) resumes)."""
        if epoch != self.epoch:
            self.epoch, self.position, self._start, self._sampler_state, self._origin = epoch, 0, 0, None, 0

    def replace_negatives(self, negative_sampler, batches_done: int) -> None:
        """Content variant: this epoch's batches from `batches_done` on come from `negative_sampler`
        (from its current state), the next iteration starting there, exactly as after a resume."""
        if self.variant != "content":
            raise ValueError("replace_negatives needs the content variant")
        self.negative_sampler = negative_sampler
        self._origin = self.position = self._start = batches_done
        self._sampler_state = copy.deepcopy(negative_sampler.state_dict())

    def __iter__(self):
        start, self._start = self._start, 0
        for k, batch in enumerate(self._global_batches(), start=self._origin):
            if k >= start:
                self.position = k + 1
                yield batch[self.rank * self.local_size:(self.rank + 1) * self.local_size].tolist()

    def _global_batches(self):
        # the epoch's global batches from the first: np.ndarray [batch_size] each
        if self.variant == "content":
            if self._sampler_state is None:
                self._sampler_state = copy.deepcopy(self.negative_sampler.state_dict())
            else:  # replay this epoch from its start
                self.negative_sampler.load_state_dict(copy.deepcopy(self._sampler_state))
            for _ in range(self._origin, self.batches_per_epoch):
                yield np.asarray(self.negative_sampler.video_batch(self.batch_size), dtype=np.int64)
            return
        g = make_generator(self.seed, self.epoch)
        n_perms = -(-self.batches_per_epoch * self.batch_size // self.n_videos)
        order = torch.cat([torch.randperm(self.n_videos, generator=g) for _ in range(n_perms)])
        for k in range(self.batches_per_epoch):
            yield order[k * self.batch_size:(k + 1) * self.batch_size].numpy()

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """batches_done: batches of this epoch the training loop has consumed (a DataLoader with
        workers prefetches, so the sampler's own count runs ahead); None = those yielded."""
        done = self.position if batches_done is None else batches_done
        state = {"epoch": self.epoch, "position": done}
        if self.variant == "content":
            if self._sampler_state is None:  # the epoch has not started: its start is now
                self._sampler_state = copy.deepcopy(self.negative_sampler.state_dict())
            state["negative_sampler"] = copy.deepcopy(self._sampler_state)
            if self._origin:
                state["origin"] = self._origin
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._start = state["position"]
        self._sampler_state = copy.deepcopy(state.get("negative_sampler"))
        self._origin = int(state.get("origin", 0))
