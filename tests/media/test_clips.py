import numpy as np
import pytest

from pemt_pipeline.media.clips import ClipPlacementError, clip_span, frame_times, plan_clips


def test_clip_span():
    assert clip_span(32, 2, 30) == pytest.approx(64 / 30)
    assert clip_span(8, 2, 15) == pytest.approx(16 / 15)


def test_uniform_spreads_from_start_to_end():
    plan = plan_clips(duration=20.0, span=2.0, n_clips=5, placement="uniform")
    np.testing.assert_allclose(plan.starts, [0.0, 4.5, 9.0, 13.5, 18.0])
    assert plan.mask.all() and not plan.overlapping and plan.n_real == 5


def test_consecutive_is_centred_and_back_to_back():
    plan = plan_clips(duration=20.0, span=2.0, n_clips=5, placement="consecutive")
    np.testing.assert_allclose(plan.starts, [5.0, 7.0, 9.0, 11.0, 13.0])
    np.testing.assert_allclose(np.diff(plan.starts), 2.0)


def test_single_clip_starts_at_zero():
    plan = plan_clips(duration=5.0, span=2.0, n_clips=1)
    np.testing.assert_allclose(plan.starts, [0.0])


@pytest.mark.parametrize("placement", ["uniform", "consecutive"])
def test_short_video_overlap(placement):
    plan = plan_clips(duration=5.0, span=2.0, n_clips=4, placement=placement, short_video_policy="overlap")
    assert plan.overlapping and plan.mask.all()
    np.testing.assert_allclose(plan.starts, [0.0, 1.0, 2.0, 3.0])  # last clip ends at the end


@pytest.mark.parametrize("placement,first", [("uniform", 0.0), ("consecutive", 0.5)])
def test_short_video_pad(placement, first):
    plan = plan_clips(duration=5.0, span=2.0, n_clips=4, placement=placement, short_video_policy="pad")
    assert plan.n_real == 2 and plan.mask.tolist() == [True, True, False, False] and not plan.overlapping
    assert plan.starts[0] == pytest.approx(first)
    assert plan.starts[1] + 2.0 <= 5.0 + 1e-9


def test_short_video_reject_and_shorter_than_one_clip():
    with pytest.raises(ClipPlacementError, match="2 clip"):
        plan_clips(duration=5.0, span=2.0, n_clips=4, short_video_policy="reject")
    for policy in ("overlap", "pad", "reject"):
        with pytest.raises(ClipPlacementError, match="shorter than one clip"):
            plan_clips(duration=1.5, span=2.0, n_clips=4, short_video_policy=policy)


def test_exact_fit_is_not_short():
    plan = plan_clips(duration=8.0, span=2.0, n_clips=4, short_video_policy="reject")
    np.testing.assert_allclose(plan.starts, [0, 2, 4, 6])


def test_bad_arguments():
    with pytest.raises(ValueError, match="placement"):
        plan_clips(10, 1, 2, placement="random")
    with pytest.raises(ValueError, match="short_video_policy"):
        plan_clips(10, 1, 2, short_video_policy="loop")


def test_frame_times():
    times = frame_times(np.array([0.0, 10.0]), frames_per_clip=3, frame_stride=2, fps=30)
    np.testing.assert_allclose(times, [[0, 2 / 30, 4 / 30], [10, 10 + 2 / 30, 10 + 4 / 30]])
