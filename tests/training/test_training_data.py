"""Training data: items from tiny shards, reproducible augmentation, clip ids, the batch sampler."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pemt_pipeline.features.embed import clip_table
from pemt_pipeline.features.transforms import video_clips
from pemt_pipeline.media.shards import load_shard, write_shard
from pemt_pipeline.training import VideoBatchSampler
from pemt_pipeline.features import AugmentConfig, ShardClipDataset, collate, model_batch

T, FRAMES, H, W, MELS, L = 3, 4, 10, 14, 16, 20
AUG = AugmentConfig(crop=8, short_side_range=(8, 10), flip=0.5, frame_jitter=1, freq_mask=0.1, time_mask=0.1)



def make_manifest(folder, n_clips=(2, 3, 1), frames=None, height=H, width=W) -> pd.DataFrame:
    """One shard per video with n real clips (the rest padding), random content."""
    rng = np.random.default_rng(0)
    rows = []
    for v, n in enumerate(n_clips):
        mask = np.arange(T) < n
        f = rng.integers(0, 256, (T, FRAMES, height, width, 3), dtype=np.uint8) if frames is None else frames
        tensors = {"frames": f, "log_mel": rng.normal(size=(T, MELS, L)).astype(np.float32),
                   "clip_start": np.arange(T, dtype=np.float64), "clip_mask": mask,
                   "frame_time": np.zeros((T, FRAMES), dtype=np.float64)}
        path = folder / f"v{v}.safetensors"
        write_shard(path, tensors, {"video_id": f"v{v}"})
        rows.append({"video_id": f"v{v}", "shard_path": str(path), "n_clips": n, "label": "x", "split": "train"})
    return pd.DataFrame(rows)


@pytest.fixture
def manifest(tmp_path) -> pd.DataFrame:
    return make_manifest(tmp_path)


def test_item_shapes_and_dtypes(manifest):
    for train in (True, False):
        item = ShardClipDataset(manifest, AUG, train=train)[1]
        assert item["video"].shape == (T, 3, FRAMES, 8, 8) and item["video"].dtype == torch.uint8
        assert item["audio"].shape == (T, MELS, L) and item["audio"].dtype == torch.float32
        assert item["clip_mask"].dtype == torch.bool and item["clip_mask"].tolist() == [True] * 3
        assert item["video_index"].dtype == torch.int64 and int(item["video_index"]) == 1
        assert item["clip_ids"].dtype == torch.int64 and item["clip_ids"].shape == (T,)


def test_eval_item_is_the_centre_crop_and_raw_audio(manifest):
    item = ShardClipDataset(manifest, AUG, train=False)[0]
    shard = load_shard(manifest.shard_path[0])
    torch.testing.assert_close(model_batch(item, "cpu", AUG)["video"], video_clips(shard["frames"], 8), rtol=0, atol=0)
    torch.testing.assert_close(item["audio"], torch.from_numpy(shard["log_mel"]), rtol=0, atol=0)


def test_augmentation_is_reproducible_per_seed_epoch_index(manifest):
    a, b = ShardClipDataset(manifest, AUG, train=True, seed=3), ShardClipDataset(manifest, AUG, train=True, seed=3)
    x, y = a[2], b[2]
    assert torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
    b.set_epoch(1)
    z = b[2]
    assert not torch.equal(x["video"], z["video"])
    assert not torch.equal(ShardClipDataset(manifest, AUG, train=True, seed=4)[2]["video"], x["video"])


def test_augmentation_does_not_depend_on_worker_count(manifest):
    def batches(workers):
        ds = ShardClipDataset(manifest, AUG, train=True, seed=1)
        ds.set_epoch(2)
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
        return [b["video"] for b in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


def test_flip_really_flips(tmp_path):
    frames = np.zeros((T, FRAMES, 10, 10, 3), dtype=np.uint8)
    frames[..., :3, :] = 255  # bright left stripe
    manifest = make_manifest(tmp_path, (3,), frames=frames)
    base = dict(crop=10, short_side_range=(10, 10), freq_mask=0.0, time_mask=0.0)
    eval_video = ShardClipDataset(manifest, AugmentConfig(**base), train=False)[0]["video"]
    never = ShardClipDataset(manifest, AugmentConfig(**base, flip=0.0), train=True)[0]["video"]
    always = ShardClipDataset(manifest, AugmentConfig(**base, flip=1.0), train=True)[0]["video"]
    assert torch.equal(never, eval_video)
    assert torch.equal(always, eval_video.flip(-1))
    assert always[..., -1].min() == 255 and always[..., 0].max() == 0  # the stripe moved to the right


def test_crop_window_stays_within_resized_range(tmp_path):
    # short side resized to 8 (from 10): the 8 x 8 crop then covers the whole 10-pixel height
    frames = np.broadcast_to(np.arange(10, dtype=np.uint8)[:, None, None] * 25, (T, FRAMES, 10, 10, 3)).copy()
    manifest = make_manifest(tmp_path, (3,), frames=frames)
    cfg = AugmentConfig(crop=8, short_side_range=(8, 8), flip=0.0, freq_mask=0.0, time_mask=0.0)
    video = ShardClipDataset(manifest, cfg, train=True)[0]["video"]
    column = video[0, 0, 0, :, 0] / 255  # [8] rows of one column
    assert column[0] < 0.1 and column[-1] > 0.8  # both ends of the gradient are in the crop


def test_frame_jitter_shifts_within_the_clip_repeating_edges(tmp_path):
    frames = np.broadcast_to(np.arange(FRAMES, dtype=np.uint8)[:, None, None, None] * 50,
                             (T, FRAMES, 8, 8, 3)).copy()
    manifest = make_manifest(tmp_path, (3,), frames=frames)
    cfg = AugmentConfig(crop=8, short_side_range=(8, 8), flip=0.0, frame_jitter=2, freq_mask=0.0, time_mask=0.0)
    ds = ShardClipDataset(manifest, cfg, train=True)
    shifts = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        video = ds[0]["video"]  # [T, 3, F, 8, 8]
        for clip in video:
            index = (clip[0, :, 0, 0] / 50).round().long()  # source frames
            shift = int(index[0]) if index[0] > 0 else int(index[-1]) - (FRAMES - 1)
            assert torch.equal(index, (torch.arange(FRAMES) + shift).clamp(0, FRAMES - 1))
            shifts.add(shift)
    assert shifts == {-2, -1, 0, 1, 2}


def test_specaugment_masks_bands_to_the_fill_value_within_the_width(manifest):
    raw = torch.from_numpy(load_shard(manifest.shard_path[1])["log_mel"])  # [T, MELS, L], 3 real clips
    fill = raw.mean()
    for axis, cfg in ((1, dataclasses.replace(AUG, freq_mask=0.25, time_mask=0.0)),
                      (2, dataclasses.replace(AUG, freq_mask=0.0, time_mask=0.2))):
        max_width = 4  # 0.25 * 16 mel bins, 0.2 * 20 frames
        ds = ShardClipDataset(manifest, cfg, train=True)
        widths = []
        for epoch in range(10):
            ds.set_epoch(epoch)
            audio = ds[1]["audio"]
            changed = audio != raw  # [T, MELS, L]
            assert torch.allclose(audio[changed], fill.expand(int(changed.sum())))
            other = 3 - axis  # a masked band spans the whole other axis
            band = changed.any(other)  # [T, size of the masked axis]
            assert torch.equal(changed, band.unsqueeze(other).expand_as(changed))
            for row in band:
                idx = torch.nonzero(row).flatten()
                if len(idx):
                    assert idx[-1] - idx[0] + 1 == len(idx)  # one contiguous band
                widths.append(len(idx))
        assert max(widths) <= max_width and max(widths) >= 2 and min(widths) == 0


def test_clip_ids_number_real_clips_in_manifest_order(manifest):
    ds = ShardClipDataset(manifest, AUG, train=False)
    ids = [ds[i]["clip_ids"].tolist() for i in range(len(ds))]
    assert ids == [[0, 1, -1], [2, 3, 4], [5, -1, -1]]
    table = clip_table(manifest)  # the embedding store's clip table
    for i, video_id in enumerate(manifest.video_id):
        item = ds[i]
        rows = table[table.video_id == video_id]
        assert item["clip_ids"][item["clip_mask"]].tolist() == rows.clip_id.tolist()
        assert torch.nonzero(item["clip_mask"]).flatten().tolist() == rows.clip_index.tolist()
        assert (item["clip_ids"][~item["clip_mask"]] == -1).all()


def test_given_clip_ids_are_used_and_checked(manifest):
    ds = ShardClipDataset(manifest, AUG, train=False, clip_ids=np.arange(6) + 100)
    assert ds[1]["clip_ids"].tolist() == [102, 103, 104]
    with pytest.raises(ValueError, match="5 ids"):
        ShardClipDataset(manifest, AUG, train=False, clip_ids=np.arange(5))


def test_missing_shard_is_named(manifest, tmp_path):
    (tmp_path / "v1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="v1.safetensors"):
        ShardClipDataset(manifest, AUG, train=True)


def test_augment_config_rejects_unknown_keys_and_bad_values():
    assert AugmentConfig.from_dict({"crop": 112, "short_side_range": [128, 160]}).short_side_range == (128, 160)
    with pytest.raises(ValueError, match="colour"):
        AugmentConfig.from_dict({"crop": 56, "colour": 1})
    with pytest.raises(ValueError, match="crop"):
        AugmentConfig(crop=70, short_side_range=(56, 64))


def test_dataloader_batch_over_video_batches(manifest):
    ds = ShardClipDataset(manifest, AUG, train=True)
    loader = DataLoader(ds, batch_sampler=VideoBatchSampler(3, 2, seed=0), collate_fn=collate)
    (batch,) = list(loader)
    assert batch["video"].shape == (2, T, 3, FRAMES, 8, 8) and batch["audio"].shape == (2, T, MELS, L)
    inputs = model_batch(batch, "cpu", AUG)  # what the model sees: normalised float clips
    assert inputs["video"].dtype == torch.float32
    torch.testing.assert_close(inputs["video"], (batch["video"] / 255.0 - AUG.mean) / AUG.std)
    assert batch["clip_mask"].shape == batch["clip_ids"].shape == (2, T) and batch["video_index"].shape == (2,)


# --- VideoBatchSampler ------------------------------------------------------------------------


class StandInSampler:
    """The negative sampler's interface: video_batch(batch_size) and state_dict / load_state_dict."""

    def __init__(self, n_videos: int, seed: int):
        self.n, self.rng, self.calls = n_videos, np.random.default_rng(seed), []

    def video_batch(self, batch_size: int) -> np.ndarray:
        self.calls.append(batch_size)
        return self.rng.choice(self.n, batch_size, replace=False)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def epoch_batches(sampler: VideoBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_random_batches_cover_every_video_once_per_epoch():
    sampler = VideoBatchSampler(12, 3, seed=5)
    assert len(sampler) == 4
    first, second = epoch_batches(sampler, 0), epoch_batches(sampler, 1)
    for batches in (first, second):
        assert len(batches) == 4 and all(len(b) == 3 for b in batches)
        assert sorted(sum(batches, [])) == list(range(12))
    assert first != second
    assert epoch_batches(VideoBatchSampler(12, 3, seed=5), 1) == second
    assert epoch_batches(VideoBatchSampler(12, 3, seed=6), 1) != second


def test_more_batches_than_videos_chain_permutations():
    batches = epoch_batches(VideoBatchSampler(5, 2, batches_per_epoch=5, seed=0), 0)
    flat = sum(batches, [])
    assert len(batches) == 5 and sorted(flat) == sorted(list(range(5)) * 2)


def test_content_batches_come_from_the_negative_sampler():
    stand_in, reference = StandInSampler(20, seed=1), StandInSampler(20, seed=1)
    sampler = VideoBatchSampler(20, 4, variant="content", negative_sampler=stand_in, batches_per_epoch=3)
    batches = epoch_batches(sampler, 0)
    assert stand_in.calls == [4, 4, 4]
    assert batches == [reference.video_batch(4).tolist() for _ in range(3)]
    with pytest.raises(ValueError, match="negative_sampler"):
        VideoBatchSampler(20, 4, variant="content")


@pytest.mark.parametrize("variant", ["random", "content"])
def test_ddp_ranks_take_disjoint_contiguous_slices_of_the_global_batch(variant):
    def make(rank, world_size):
        return VideoBatchSampler(16, 4, variant=variant, negative_sampler=StandInSampler(16, seed=2),
                                 seed=7, rank=rank, world_size=world_size)

    full, r0, r1 = (epoch_batches(make(r, w), 1) for r, w in ((0, 1), (0, 2), (1, 2)))
    assert len(full) == len(r0) == len(r1) == 4
    for g, a, b in zip(full, r0, r1):
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert a + b == g
    with pytest.raises(ValueError, match="divisible"):
        VideoBatchSampler(16, 5, world_size=2)


@pytest.mark.parametrize("variant", ["random", "content"])
def test_resume_mid_epoch_reproduces_the_remaining_batches(variant):
    def make():
        return VideoBatchSampler(20, 4, variant=variant, negative_sampler=StandInSampler(20, seed=3), seed=9)

    reference = make()
    epoch_batches(reference, 0)
    expected = epoch_batches(reference, 1)  # 5 batches

    interrupted = make()
    epoch_batches(interrupted, 0)
    interrupted.set_epoch(1)
    it = iter(interrupted)
    done = [next(it), next(it)]
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 2
    assert done == expected[:2]

    resumed = make()  # a fresh process: its negative sampler never drew a batch
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the loop selects the epoch it resumes: keeps the position
    assert list(resumed) == expected[2:]
    assert epoch_batches(resumed, 2) == epoch_batches(reference, 2)  # and continues identically
    # a loop that consumed fewer batches than the sampler yielded (prefetching) says so
    assert interrupted.state_dict(batches_done=1)["position"] == 1
