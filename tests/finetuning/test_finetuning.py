"""Fine-tuning library: heads, test views (crops, clips, averaging), the fine-tuned file format, resume."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pemt_pipeline.features.transforms import center_crop_box
from pemt_pipeline.finetuning import (FinetuneConfig, FinetuneRun, PredictConfig, crop_offsets, crop_views,
                                      finetune, finetune_inputs, select_clips, top_k_table, view_scores)
from pemt_pipeline.finetuning.data import class_indices, training_classes
from pemt_pipeline.finetuning.scoring import batch_view_scores
from pemt_pipeline.models import (ClassifierConfig, FinetunedModel, PEMTModel, StreamOutput, VideoClassifier,
                                  VisualCNNClassifier, build_classifier, load_finetuned, load_trained, random_model,
                                  save_finetuned, save_trained, TrainedModel)
from pemt_pipeline.models.classifiers import SequenceClassifier
from pemt_pipeline.training.checkpoint import LAST, load_checkpoint
from tests.conftest import env_params
from tests.finetuning.conftest import AUGMENT, TINY_MODEL

CLASSES = ["circle", "diamond", "square", "triangle"]


def _inputs(mask_last: bool = True):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 4, 3, 4, 28, 28, generator=g)
    audio = torch.randn(2, 4, 16, 8, generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, -1] = not mask_last
    return video, audio, mask


def _finetuned(protocol: str, seed: int = 0) -> FinetunedModel:
    model = random_model(TINY_MODEL, seed)
    torch.manual_seed(seed)
    head = build_classifier(ClassifierConfig.for_model(protocol, model, len(CLASSES))).eval()
    return FinetunedModel(model, head, protocol, CLASSES, "test")


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_video_heads_give_per_clip_logits_for_every_fusion(fusion):
    torch.manual_seed(0)
    model = PEMTModel(dataclasses.replace(TINY_MODEL, fusion=fusion)).eval()
    head = VideoClassifier(ClassifierConfig.for_model("video", model, 5)).eval()
    concat, sequence = head(model(*_inputs()))
    assert concat.shape == sequence.shape == (2, 4, 5)
    assert torch.isfinite(concat).all() and torch.isfinite(sequence[0]).all()
    visual = VisualCNNClassifier(ClassifierConfig.for_model("visual_cnn", model, 5))
    assert visual(torch.randn(3, model.visual_cnn.out_dim)).shape == (3, 5)


def test_sequence_head_scores_each_clip_from_its_output_and_the_summaries():
    torch.manual_seed(0)
    head = SequenceClassifier(hidden=8, n_classes=3, dropout=0.5, eps=1e-5, init_std=0.5).eval()
    mask = torch.ones(2, 4, dtype=torch.bool)
    v, a = (StreamOutput(torch.randn(2, 8), torch.randn(2, 4, 8), mask) for _ in range(2))
    logits = head(v, a)  # [2, 4, 3]
    t = 2
    h = (head.visual(torch.cat([v.summary, v.clips[:, t]], -1)) + head.audio(torch.cat([a.summary, a.clips[:, t]], -1)))
    torch.testing.assert_close(logits[:, t], head.linear(head.norm(h)))
    assert head.visual.bias is None and head.audio.bias is None
    other = StreamOutput(v.summary, v.clips.clone(), mask)
    other.clips[:, 0] += 1.0  # another output at clip 0: only clip 0's logits move
    moved = head(other, a)
    torch.testing.assert_close(moved[:, 1:], logits[:, 1:])
    assert not torch.allclose(moved[:, 0], logits[:, 0])
    assert not torch.allclose(head(StreamOutput(v.summary + 1, v.clips, mask), a), logits)  # the summary: every clip


# --------------------------------------------------------------------------- views
def test_crops_sit_at_both_ends_and_the_centre_of_the_longer_side():
    assert crop_offsets(32, 42, 28, 3) == [(2, 0), (2, 7), (2, 14)]  # landscape: left, centre, right
    assert crop_offsets(42, 32, 28, 3) == [(0, 2), (7, 2), (14, 2)]  # portrait: top, centre, bottom
    assert crop_offsets(32, 42, 28, 1) == [center_crop_box(32, 42, 28)]  # one crop: the evaluation's centre crop
    assert crop_offsets(32, 32, 28, 2) == [(2, 0), (2, 4)]
    with pytest.raises(ValueError, match="crop 40 is larger than the stored frames"):
        crop_offsets(32, 42, 40, 3)
    frames = np.random.default_rng(0).integers(0, 255, (4, 2, 32, 42, 3), dtype=np.uint8)  # [T, F, H, W, 3]
    views = crop_views(frames, 28, 3)
    assert views.shape == (3, 4, 3, 2, 28, 28)
    np.testing.assert_array_equal(views[2, 1, 0].numpy(), frames[1, :, 2:30, 14:42, 0])  # right crop, clip 1, red


def test_test_clips_are_evenly_spaced_over_the_real_clips():
    mask = np.array([True] * 5 + [False] * 3)
    assert np.flatnonzero(select_clips(mask, 3)).tolist() == [0, 2, 4]
    assert np.flatnonzero(select_clips(mask, 2)).tolist() == [1, 3]
    assert np.flatnonzero(select_clips(mask, 1)).tolist() == [2]
    assert (select_clips(mask, None) == mask).all() and (select_clips(mask, 9) == mask).all()


@pytest.mark.parametrize("protocol", ["video", "visual_cnn"])
def test_video_scores_average_every_clip_and_crop(labelled_demo, protocol):
    tuned = _finetuned(protocol)
    scores = view_scores(tuned, labelled_demo, AUGMENT, n_crops=3, n_clips=2, batch_size=3, device="cpu",
                         progress=False)
    assert scores.views.shape == (8 * 3 * 2, 4) and scores.video.shape == (8, 4)
    assert (scores.views_per_video == 6).all() and (np.diff(scores.view_video) >= 0).all()
    for i in range(8):
        np.testing.assert_allclose(scores.video[i], scores.views[scores.view_video == i].mean(0), rtol=1e-5)
    np.testing.assert_allclose(scores.views.sum(1), 1, rtol=1e-5)  # probabilities
    crops = scores.views[:6].reshape(3, 2, 4)  # video 0: [crop, clip, class]
    assert not np.allclose(crops[0], crops[2])  # the left and right crops differ
    centre = view_scores(tuned, labelled_demo.iloc[:1], AUGMENT, 1, None, device="cpu", progress=False)
    assert centre.views.shape == (4, 4)  # all 4 clips, the centre crop


def test_visual_cnn_view_scores_are_the_head_on_each_clip():
    tuned = _finetuned("visual_cnn")
    video = torch.randn(1, 2, 3, 3, 4, 28, 28)  # [B, K, T, 3, F, c, c]
    mask = torch.tensor([[True, False, True]])
    p = batch_view_scores(tuned, {"video": video, "clip_mask": mask, "audio": torch.zeros(1, 3, 16, 8)})
    with torch.no_grad():
        expected = tuned.classifier(tuned.model.visual_cnn(video[0, 1, 2:3])).softmax(-1)
    torch.testing.assert_close(p[0, 1, 2:3], expected)
    assert (p[0, :, 1] == 0).all()  # an unselected clip scores nothing


def test_top_k_table_lists_the_best_classes_first():
    scores = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    manifest = pd.DataFrame({"video_id": ["a", "b"], "source_path": ["x/a.mp4", "b.mp4"]})
    table = top_k_table(scores, manifest, ["cat", "dog", "owl"], k=5)  # k capped at 3 classes
    assert list(table.columns) == ["video_id", "path", "label_1", "score_1", "label_2", "score_2", "label_3",
                                   "score_3"]
    assert table.iloc[0][["label_1", "label_2", "label_3"]].tolist() == ["dog", "owl", "cat"]
    assert table.iloc[1]["label_1"] == "cat" and table.iloc[1]["score_1"] == 0.5


# --------------------------------------------------------------------------- file format
def test_finetuned_file_round_trips_and_loads_as_a_plain_model(tmp_path):
    tuned = _finetuned("video")
    path = save_finetuned(tuned, tmp_path / "video.pt")
    loaded = load_finetuned(path)
    assert loaded.classes == CLASSES and loaded.protocol == "video" and loaded.source == "test"
    video, audio, mask = _inputs()
    with torch.no_grad():
        before, after = (m.classifier(m.model(video, audio, mask)) for m in (tuned, loaded))
        for a, b in zip(before, after):
            torch.testing.assert_close(a[mask], b[mask])
    plain = load_trained(path)  # evaluation, features and pruning read it so
    assert plain.cpp_head is None
    for k, v in tuned.model.state_dict().items():
        assert torch.equal(plain.model.state_dict()[k], v), k
    save_trained(TrainedModel(tuned.model), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="is not a fine-tuned model file"):
        load_finetuned(tmp_path / "plain.pt")


# --------------------------------------------------------------------------- configuration
def test_defaults_are_the_yaml_values():
    assert FinetuneConfig.from_dict(env_params("finetune", env="base")) == FinetuneConfig()
    assert PredictConfig.from_dict(env_params("predict", env="base")) == PredictConfig()


def test_bad_parameters_name_their_key():
    with pytest.raises(ValueError, match="finetune.visual_cnn.test_crops must be >= 1, got 0"):
        FinetuneConfig.from_dict({"visual_cnn": {"test_crops": 0}})
    with pytest.raises(ValueError, match=r"unknown finetune.video parameter\(s\) \['stesp'\]"):
        FinetuneConfig.from_dict({"video": {"stesp": 3}})
    with pytest.raises(ValueError, match="parameter finetune.top_k must be an integer"):
        FinetuneConfig.from_dict({"top_k": 2.5})
    with pytest.raises(ValueError, match="finetune.visual_cnn.batch_size must be at least 2 clips per process"):
        FinetuneConfig.from_dict({"nproc_per_node": 2, "visual_cnn": {"batch_size": 2}})
    with pytest.raises(ValueError, match="unknown predict parameter"):
        PredictConfig.from_dict({"crops": 3})
    PredictConfig.from_dict({"source_dir": "/videos", "model": "m.pt"})  # the catalog's runtime parameters


# --------------------------------------------------------------------------- training
def _run_inputs(labelled_demo, tmp_path, protocol, model=None, shared=None, **block):
    train = labelled_demo[labelled_demo["split"] == "train"].reset_index(drop=True)
    classes = training_classes(train)
    cfg = FinetuneConfig.from_dict({"checkpoint_dir": str(tmp_path / "ckpt"), "dvclive_dir": str(tmp_path / "live"),
                                    "device": "cpu", "progress": False, **(shared or {}),
                                    protocol: {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                                               **block}})
    return finetune_inputs(FinetuneRun.of(cfg, protocol, "pretrained" if model is not None else "random_init"),
                           train, class_indices(train["label"], classes), classes, model, "test", TINY_MODEL, AUGMENT)


@pytest.mark.parametrize("protocol", ["video", "visual_cnn"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(labelled_demo, tmp_path, protocol):
    """Stop after the step-2 checkpoint, resume to 4: the same weights as 4 steps straight (batches_per_epoch 1:
    epochs end and resume at a boundary). With 2 warm-up steps the first 2 steps' learning rates do not
    depend on `steps`, so a 2-step run is the 4-step run interrupted there."""
    start = random_model(TINY_MODEL, 3)
    kw = {"batches_per_epoch": 1, "warmup_steps": 2}
    straight, _ = finetune(_run_inputs(labelled_demo, tmp_path / "a", protocol, start, **kw))
    first = _run_inputs(labelled_demo, tmp_path / "b", protocol, start, **kw)
    first.train = dataclasses.replace(first.train, steps=2)  # the run that is "killed" after its step-2 checkpoint
    finetune(first)
    resumed, summary = finetune(_run_inputs(labelled_demo, tmp_path / "b", protocol, start, **kw))
    assert summary["resumed_from"] == 2 and summary["steps"] == 4 and len(summary["history"]) == 2
    for a, b in ((straight.model, resumed.model), (straight.classifier, resumed.classifier)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    trained = load_checkpoint(tmp_path / "b" / "ckpt" / protocol / "pretrained" / LAST)
    changed = [k for k, v in trained["model"].items() if not torch.equal(v, start.state_dict()[k])]
    if protocol == "visual_cnn":  # only the visual CNN is fine-tuned
        assert changed and all(k.startswith("visual_cnn.") for k in changed)
    else:
        assert {k.split(".")[0] for k in changed} >= {"visual_cnn", "audio_cnn", "projections", "transformers"}
        assert not any(k.startswith("mask_token.") for k in changed)


def test_a_checkpoint_from_another_model_is_not_resumed(labelled_demo, tmp_path):
    finetune(_run_inputs(labelled_demo, tmp_path, "visual_cnn", random_model(TINY_MODEL, 1), steps=2))
    _, summary = finetune(_run_inputs(labelled_demo, tmp_path, "visual_cnn", random_model(TINY_MODEL, 2), steps=2))
    assert summary["resumed_from"] is None  # other initial weights: set aside, started afresh
    _, summary = finetune(_run_inputs(labelled_demo, tmp_path, "visual_cnn", random_model(TINY_MODEL, 2), steps=3))
    assert summary["resumed_from"] == 2  # the same model again, more steps: resumed


def test_two_gloo_processes_fine_tune_every_protocol(labelled_demo, tmp_path):
    """The DDP path (shared with pretraining: `training.distributed.launch`): 2 CPU workers train each
    protocol (DDP needs every trained parameter used: the frozen ones are not trained) and rank 0 writes
    the checkpoint the final model comes from. In a subprocess: torch's elastic launcher leaves its
    signal handlers and multiprocessing's resource tracker in the process that launches (harmless at the
    end of a Kedro run, but later tests of this session count child processes)."""
    runs = {p: _run_inputs(labelled_demo, tmp_path, p, random_model(TINY_MODEL, 1), steps=2, batch_size=4,
                           checkpoint_every=2, shared={"nproc_per_node": 2}) for p in ("video", "visual_cnn")}
    (tmp_path / "runs.pkl").write_bytes(pickle.dumps(runs))
    code = ("import json, pickle, sys; from pemt_pipeline.finetuning import finetune\n"
            "runs = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "print(json.dumps({p: [t.protocol, s['world_size'], s['steps']] for p, (t, s) in "
            "((p, finetune(i)) for p, i in runs.items())}))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs.pkl")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {p: [p, 2, 2] for p in runs}
    for protocol in runs:
        assert (tmp_path / "ckpt" / protocol / "pretrained" / LAST).is_file()
