"""training.refresh_negatives_every: the negative table rebuilt from the CNNs being trained."""

import copy
import dataclasses

import pandas as pd
import pytest
import torch

from pemt_pipeline.features import EmbedConfig, embed_clips
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.kill_points import KILL_AFTER_CHECKPOINT
from pemt_pipeline.models import ModelConfig, load_model
from pemt_pipeline.sampling import NegativeConfig, NegativeSampler, build_negative_table, embedding_space
from pemt_pipeline.training import VideoBatchSampler
from pemt_pipeline.training import checkpoint as ckpt
from pemt_pipeline.training import loop
from pemt_pipeline.training.distributed import train
from pemt_pipeline.training.loop import TrainConfig, prepare_inputs, run_training
from pemt_pipeline.training.losses import LossConfig
from pemt_pipeline.training.refresh import TABLE_COLUMNS, TABLE_GLOB, RefreshConfig
from tests.training.conftest import TINY_AUGMENT, TINY_MODEL

MODEL, AUGMENT, LOSS = ModelConfig.from_dict(TINY_MODEL), AugmentConfig.from_dict(TINY_AUGMENT), LossConfig()
NEGATIVES = NegativeConfig(k=8)
REFRESH = RefreshConfig("joint", NEGATIVES, EmbedConfig(crop=28, progress=False))


def _initial_table(store) -> pd.DataFrame:
    """The negatives pipeline's table: from the random-init embeddings of the store."""
    return build_negative_table(embedding_space(store.visual, store.audio, "joint"),
                                pd.factorize(store.clips["video_id"])[0], NEGATIVES, progress=False)


def _inputs(tiny_demo, folder, refresh=REFRESH, **train):
    manifest, store = tiny_demo
    params = {"steps": 8, "batch_size": 4, "negatives": "content", "checkpoint_dir": str(folder / "ckpt"),
              "dvclive_dir": str(folder / "live"), "log_every": 1, "checkpoint_every": 2, "warmup_steps": 2,
              "progress": False, **train}
    return prepare_inputs(manifest, store.clips, _initial_table(store), MODEL, LOSS, AUGMENT,
                          TrainConfig.from_dict(params), refresh)


def _weights(folder):
    return ckpt.load_checkpoint(folder / "ckpt" / ckpt.LAST)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_key_is_checked_and_random_batches_ignore_it(tiny_demo, tmp_path, caplog):
    with pytest.raises(ValueError, match="training.refresh_negatives_every must be >= 0"):
        TrainConfig(refresh_negatives_every=-1)
    with pytest.raises(ValueError, match="refresh_negatives_every > 0 needs the negatives and embedding"):
        _inputs(tiny_demo, tmp_path, refresh=None, refresh_negatives_every=2)
    with pytest.raises(ValueError, match="negatives.space must be one of"):
        RefreshConfig.from_params({"space": "text"}, {})
    inputs = _inputs(tiny_demo, tmp_path, negatives="random", refresh_negatives_every=2)
    assert inputs.refresh is None and "no effect with training.negatives: random" in caplog.text
    assert "refresh_negatives_every" in TrainConfig().identity()  # resuming needs the same value


def test_replaced_negatives_draw_the_rest_of_the_epoch_and_resume(tiny_demo):
    """After `replace_negatives` at batch 1 of 3, the epoch's batches 1 and 2 are the new sampler's
    first two draws, on every rank; a sampler loaded from the state continues the same way."""
    store = tiny_demo[1]
    video_index = pd.factorize(store.clips["video_id"])[0]
    table = _initial_table(store)
    new = NegativeSampler(table, video_index, seed=5)
    expected = [new.video_batch(4) for _ in range(2)]
    for rank in (0, 1):
        batches = VideoBatchSampler(8, 4, "content", NegativeSampler(table, video_index), batches_per_epoch=3,
                                    rank=rank, world_size=2)
        next(iter(batches))
        batches.replace_negatives(NegativeSampler(table, video_index, seed=5), 1)
        state = copy.deepcopy(batches.state_dict())
        assert list(batches) == [list(e[rank * 2:(rank + 1) * 2]) for e in expected]
        resumed = VideoBatchSampler(8, 4, "content", NegativeSampler(table, video_index, seed=99),
                                    batches_per_epoch=3, rank=rank, world_size=2)
        resumed.load_state_dict(state)
        assert list(resumed) == [list(e[rank * 2:(rank + 1) * 2]) for e in expected]
        batches.set_epoch(1)  # a new epoch: all its batches again
        assert len(list(batches)) == 3


def test_refreshes_at_exactly_the_right_steps_and_only_then(tiny_demo, tmp_path):
    summary = run_training(_inputs(tiny_demo, tmp_path / "on", steps=7, refresh_negatives_every=3))
    done = summary["negative_refreshes"]
    assert [r["step"] for r in done["history"]] == [3, 6] and done["count"] == 2 and done["last_step"] == 6
    assert done["clips_embedded"] == 2 * 32 and done["seconds"] > 0
    tables = sorted(p.name for p in (tmp_path / "on" / "ckpt").glob(TABLE_GLOB))
    assert tables == [ckpt.load_checkpoint(tmp_path / "on" / "ckpt" / ckpt.LAST)["negatives"]["file"]]  # step 6's
    assert tables[0].startswith("negatives-step0000006-")
    assert (tmp_path / "on" / "live" / "plots" / "metrics" / "train" / "refresh_seconds.tsv").is_file()
    # configured but never due (every 100 steps): no refresh, and exactly the weights of a run without
    never = run_training(_inputs(tiny_demo, tmp_path / "never", steps=4, refresh_negatives_every=100))
    off = run_training(_inputs(tiny_demo, tmp_path / "off", steps=4, refresh_negatives_every=0))
    assert never["negative_refreshes"]["count"] == 0 and "negative_refreshes" not in off
    assert "negatives" not in ckpt.load_checkpoint(tmp_path / "off" / "ckpt" / ckpt.LAST)
    _assert_same_weights(_weights(tmp_path / "never"), _weights(tmp_path / "off"))
    assert not list((tmp_path / "off" / "ckpt").glob(TABLE_GLOB))


def test_the_refreshed_table_is_the_current_cnns(tiny_demo, tmp_path):
    """The table of step 2 equals one built directly from the step-2 model's embeddings (that model
    comes from a 2-step run: the warm-up makes its first 2 steps the same), and differs from the
    initial table."""
    manifest, store = tiny_demo
    inputs = _inputs(tiny_demo, tmp_path / "a", steps=4, refresh_negatives_every=2)
    run_training(inputs)
    ref = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / ckpt.LAST)["negatives"]
    refreshed = pd.read_parquet(tmp_path / "a" / "ckpt" / ref["file"])
    run_training(_inputs(tiny_demo, tmp_path / "b", steps=2))
    model = load_model(tmp_path / "b" / "ckpt" / ckpt.LAST)
    current = embed_clips(manifest, MODEL, EmbedConfig(crop=28, output_dir=str(tmp_path / "emb"), progress=False),
                          model=model)
    direct = build_negative_table(embedding_space(current.visual, current.audio, "joint"),
                                  inputs.clip_video_index, NEGATIVES, progress=False)
    pd.testing.assert_frame_equal(refreshed, direct[TABLE_COLUMNS])
    initial = inputs.negatives[TABLE_COLUMNS]
    assert len(initial) == len(refreshed)
    assert not (initial["candidate"].to_numpy() == refreshed["candidate"].to_numpy()).all()


@pytest.mark.parametrize("every", [3, 4])  # a refresh mid-epoch / at an epoch boundary (4 batches of 2 per epoch)
def test_resume_after_a_refresh_gives_the_uninterrupted_weights(tiny_demo, tmp_path, monkeypatch, every):
    """Stopped right after the step-4 checkpoint (after a refresh), resumed to 8: the same weights
    as 8 steps straight, with the refreshed table restored from the checkpoint."""
    run_training(_inputs(tiny_demo, tmp_path / "a", refresh_negatives_every=every))

    class Killed(Exception):
        pass

    def kill_at(point, count):
        if count == point:
            raise Killed

    monkeypatch.setattr(loop, "kill_at", kill_at)
    monkeypatch.setenv(KILL_AFTER_CHECKPOINT, "4")
    with pytest.raises(Killed):
        run_training(_inputs(tiny_demo, tmp_path / "b", refresh_negatives_every=every))
    monkeypatch.delenv(KILL_AFTER_CHECKPOINT)
    summary = run_training(_inputs(tiny_demo, tmp_path / "b", refresh_negatives_every=every))
    assert summary["resumed_from"] == 4
    assert [r["step"] for r in summary["negative_refreshes"]["history"]] == list(range(every, 8, every))
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_a_missing_refreshed_table_means_starting_afresh(tiny_demo, tmp_path):
    run_training(_inputs(tiny_demo, tmp_path, steps=4, refresh_negatives_every=2))
    for table in (tmp_path / "ckpt").glob(TABLE_GLOB):
        table.unlink()
    summary = run_training(_inputs(tiny_demo, tmp_path, steps=4, refresh_negatives_every=2))
    assert summary["resumed_from"] is None and len(list((tmp_path / "ckpt").glob(ckpt.STALE))) == 1
    # the refresh settings are part of the data identity (when refreshes are on)
    visual = _inputs(tiny_demo, tmp_path, steps=4, refresh_negatives_every=2,
                     refresh=dataclasses.replace(REFRESH, space="visual"))
    assert visual.fingerprint != _inputs(tiny_demo, tmp_path, steps=4, refresh_negatives_every=2).fingerprint
    assert _inputs(tiny_demo, tmp_path, steps=4).fingerprint == \
        _inputs(tiny_demo, tmp_path, steps=4, refresh=dataclasses.replace(REFRESH, space="visual")).fingerprint


def test_two_gloo_processes_refresh_the_same_table(tiny_demo, tmp_path):
    """DDP with a refresh: rank 0 builds the table and every rank receives it (the loop checks that
    all ranks hold the same digest); losses stay within the DDP tolerance of one process
    (tests/training/test_training_loop.py::test_two_gloo_processes_match_one_process)."""
    kw = {"steps": 8, "log_every": 8, "warmup_steps": 1, "refresh_negatives_every": 4}
    one = train(_inputs(tiny_demo, tmp_path / "one", **kw))
    two = train(_inputs(tiny_demo, tmp_path / "two", nproc_per_node=2, **kw))
    assert two["world_size"] == 2
    assert [r["step"] for r in two["negative_refreshes"]["history"]] == [4]
    written = ckpt.load_checkpoint(tmp_path / "two" / "ckpt" / ckpt.LAST)["negatives"]
    assert written["digest"] == two["negative_refreshes"]["history"][0]["digest"]
    assert (tmp_path / "two" / "ckpt" / written["file"]).is_file()  # rank 0 wrote it
    assert two["final"]["total"] == pytest.approx(one["final"]["total"], rel=0.03)
