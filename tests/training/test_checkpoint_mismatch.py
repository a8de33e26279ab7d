"""A checkpoint of other parameters is set aside under a name of its own, never overwritten, and the
warning names the file, the parameters that differ and how to resume it."""

import logging

from pemt_pipeline.training import checkpoint as ckpt
from pemt_pipeline.training.loop import run_training
from tests.training.test_training_loop import _inputs


def test_mismatched_checkpoints_are_all_kept_under_distinct_names(tiny_demo, tmp_path, caplog):
    kw = {"steps": 1, "checkpoint_every": 1, "warmup_steps": 0}
    ckpt_dir = tmp_path / "ckpt"
    run_training(_inputs(tiny_demo, tmp_path, lr=1e-3, **kw))
    first = (ckpt_dir / ckpt.LAST).read_bytes()
    with caplog.at_level(logging.WARNING, logger="pemt_pipeline.training.loop"):
        assert run_training(_inputs(tiny_demo, tmp_path, lr=2e-3, **kw))["resumed_from"] is None
        second = (ckpt_dir / ckpt.LAST).read_bytes()
        assert run_training(_inputs(tiny_demo, tmp_path, lr=1e-3, **kw))["resumed_from"] is None
    stale = sorted(ckpt_dir.glob(ckpt.STALE))
    assert len(stale) == 2 and stale[0].name != stale[1].name
    assert sorted(p.read_bytes() for p in stale) == sorted([first, second])  # both kept whole
    messages = [r.getMessage() for r in caplog.records if "written with other parameters" in r.getMessage()]
    kept_first, kept_second = (next(p for p in stale if p.read_bytes() == c) for c in (first, second))
    assert len(messages) == 2
    assert str(kept_first) in messages[0] and "training.lr (0.001 in the checkpoint, 0.002 now)" in messages[0]
    assert str(kept_second) in messages[1] and "training.lr (0.002 in the checkpoint, 0.001 now)" in messages[1]
    assert all(f"move it back to {ckpt_dir / ckpt.LAST}" in m for m in messages)


def test_set_aside_never_overwrites(tmp_path):
    names = []
    for step in (4, 4, 4):
        (tmp_path / ckpt.LAST).write_bytes(f"checkpoint {len(names)}".encode())
        names.append(ckpt.set_aside(tmp_path / ckpt.LAST, step))
    assert len(set(names)) == 3 and not (tmp_path / ckpt.LAST).exists()
    assert all(p.name.startswith("stale-") and "-step4" in p.name and p.suffix == ".pt" for p in names)
    assert sorted(p.read_bytes() for p in names) == [b"checkpoint 0", b"checkpoint 1", b"checkpoint 2"]


def test_config_differences_lists_dotted_keys():
    assert ckpt.config_differences({"a": 1, "m": {"x": 1, "y": 2}}, {"a": 1, "m": {"x": 3}, "b": 0}) == [
        ("b", None, 0), ("m.x", 1, 3), ("m.y", 2, None)]
