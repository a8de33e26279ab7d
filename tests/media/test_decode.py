import numpy as np
import pytest

from tests.media.makers import frame_index, make_video
from pemt_pipeline.media.decode import (
    MediaError,
    StreamInfo,
    choose_audio,
    choose_video,
    decode,
    open_container,
    probe,
    resized_size,
)


def test_stream_choice_rule():
    v = [StreamInfo(0, "video", "h264", True, 320, 180), StreamInfo(3, "video", "h264", False, 480, 270),
         StreamInfo(5, "video", "h264", False, 480, 270)]
    assert choose_video(v).index == 3  # most pixels, then lowest index
    v.append(StreamInfo(7, "video", "h264", True, 480, 270))
    assert choose_video(v).index == 7  # default flag breaks the tie
    a = [StreamInfo(1, "audio", "aac", True, sample_rate=8000, channels=2),
         StreamInfo(4, "audio", "aac", False, sample_rate=16000, channels=1),
         StreamInfo(6, "audio", "aac", False, sample_rate=16000, channels=2)]
    assert choose_audio(a).index == 6
    assert choose_video([]) is None and choose_audio([]) is None


def test_resized_size():
    assert resized_size(1280, 720, 64) == (114, 64)
    assert resized_size(240, 320, 64) == (64, 85)
    assert resized_size(97, 55, 64) == (113, 64)


def test_vfr_frames_are_picked_by_timestamp(tmp_path):
    pts = [0, 40, 200, 210, 220, 600, 640, 1000, 1040]  # irregular, with a long hold
    path = make_video(tmp_path / "vfr.mp4", pts_ms=pts, audio=None)
    targets = np.array([0.0, 0.1, 0.205, 0.21, 0.5, 0.62, 0.99, 1.05, 1.2])
    d = decode(path, 0, None, targets, short_side=32)
    assert d.n_video_frames == len(pts)
    got = [frame_index(img, len(pts)) for img in d.frames]
    expected = [max(i for i, p in enumerate(pts) if p <= t * 1000 + 1e-6) for t in targets]
    assert got == expected
    np.testing.assert_allclose(d.frame_source_times, [pts[i] / 1000 for i in expected])
    assert d.video_duration == pytest.approx(1.08, abs=0.001)  # last pts + its 40 ms
    assert d.held_targets == 1  # 1.2 s is after the end


def test_rotation_is_applied(tmp_path):
    path = make_video(tmp_path / "rot.mp4", size=(64, 32), rotation=90, pattern="corner", audio=None, seconds=0.4)
    d = decode(path, 0, None, np.array([0.0]), short_side=32)
    img = d.frames[0]
    assert d.rotation == 90
    assert img.shape == (64, 32, 3)  # landscape stored, portrait shown
    # 90 degrees counter-clockwise moves the white top-left quadrant to the bottom-left.
    assert img[48:, :16].mean() > 200 and img[:16, :16].mean() < 50


def test_odd_size_video(tmp_path):
    path = make_video(tmp_path / "odd size é.mkv", size=(97, 55), codec="ffv1", pix_fmt="yuv444p", audio=None)
    d = decode(path, 0, None, np.array([0.0, 1.0]), short_side=64)
    assert d.frames.shape == (2, 64, 113, 3)


def test_audio_is_decoded_on_the_video_timeline(tmp_path):
    path = make_video(tmp_path / "av.mp4", seconds=2.0, audio=(22050, 2))
    with open_container(path) as c:
        info = probe(c)
    assert [s.index for s in info.video] == [0] and info.audio[0].channels == 2
    d = decode(path, 0, 1, None, short_side=32, audio_windows=np.array([[0.0, 1.0], [1.5, 3.0]]))
    assert d.audio_rate == 22050 and d.frames is None
    assert d.audio.end / 22050 == pytest.approx(2.0, abs=0.1)  # the track ends with the video
    first, second = d.audio.data
    assert len(first) == 22050 and np.abs(first[1000:]).max() == pytest.approx(0.3, abs=0.05)
    # Only the windows are kept: the second stops where the track does, the rest stays zero.
    assert np.abs(second[: int(0.4 * 22050)]).max() == pytest.approx(0.3, abs=0.05)
    assert not second[int(0.6 * 22050):].any()


@pytest.mark.parametrize("content,code", [(b"", "empty_file"), (b"\x00\x01garbage" * 500, "not_media")])
def test_open_errors(tmp_path, content, code):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(MediaError) as err:
        open_container(bad)
    assert err.value.code == code
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(MediaError, match="is_directory"):
        open_container(tmp_path / "dir.mp4")
