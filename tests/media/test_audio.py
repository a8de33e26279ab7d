import numpy as np
import pytest
import torchaudio

from pemt_pipeline.media.audio import MelConfig, TimelineBuffer, clip_windows, downmix, log_mel, resample, rms_dbfs


def sine(freq, rate, seconds, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 44100)])
def test_resample_keeps_pitch_and_duration(orig, new):
    x = sine(440.0, orig, 2.0)
    y = resample(x, orig, new)
    assert abs(len(y) - 2.0 * new) <= 1
    assert dominant_frequency(y, new) == pytest.approx(440.0, abs=1.0)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_resample_identity():
    x = sine(100, 16000, 0.1)
    assert resample(x, 16000, 16000) is x or np.array_equal(resample(x, 16000, 16000), x)


def test_downmix_is_channel_mean():
    planes = np.stack([np.ones(10), -np.ones(10), np.full(10, 4.0)]).astype(np.float32)
    np.testing.assert_allclose(downmix(planes), np.full(10, 4 / 3), rtol=1e-6)
    np.testing.assert_array_equal(downmix(planes[:1]), planes[0])


def test_timeline_buffer_places_chunks_by_time():
    buf = TimelineBuffer(10)
    buf.write(0.5, np.ones(5, dtype=np.float32))  # samples 5..9
    buf.write(-0.2, np.full(4, 2.0, dtype=np.float32))  # starts before zero: samples 0..1 kept
    buf.write(2.0, np.full(2, 3.0, dtype=np.float32))  # after a gap
    np.testing.assert_array_equal(buf.samples, [2, 2, 0, 0, 0, 1, 1, 1, 1, 1] + [0] * 10 + [3, 3])


CFG = MelConfig(sample_rate=16000, n_mels=40, mel_frames=48, span=16 / 15, n_fft=512, win_length=400)


def test_mel_shapes_and_hop():
    assert CFG.hop_length == round(16 / 15 * 16000 / 48) == 356
    track = sine(1000, 16000, 5.0)
    windows = clip_windows(track, np.array([0.0, 1.0, 3.9]), CFG)
    assert windows.shape == (3, CFG.window_samples)
    mel = log_mel(windows, CFG)
    assert mel.shape == (3, 40, 48) and mel.dtype == np.float32


def test_mel_paper_hop():
    paper = MelConfig(44100, 80, 128, 64 / 30, 2048, 1470)
    assert paper.hop_length == 735


def test_mel_matches_torchaudio_on_a_centred_track():
    """Our per-clip windows give the same frames as torchaudio's center=True STFT of the whole track."""
    track = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    start = 1.0  # a clip starting at a hop multiple of the track
    hop = CFG.hop_length
    start = round(start * 16000 / hop) * hop / 16000
    ours = log_mel(clip_windows(track, np.array([start]), CFG), CFG)[0]
    import torch

    full = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=400, hop_length=hop, n_mels=40,
                                                center=True, pad_mode="constant")(torch.from_numpy(track))
    first = round(start * 16000 / hop)
    ref = torch.log(full[:, first:first + 48] + 1e-6).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_mel_peak_follows_pitch_and_silence_is_floor():
    low, high = sine(300, 16000, 2.0), sine(3000, 16000, 2.0)
    start = np.array([0.5])
    mel_low = log_mel(clip_windows(low, start, CFG), CFG)[0].mean(axis=1)
    mel_high = log_mel(clip_windows(high, start, CFG), CFG)[0].mean(axis=1)
    assert mel_low.argmax() < mel_high.argmax()
    silent = log_mel(clip_windows(np.zeros(16000 * 2, dtype=np.float32), start, CFG), CFG)
    np.testing.assert_allclose(silent, np.log(1e-6), rtol=1e-5)


def test_windows_outside_the_track_are_zero():
    track = np.ones(1000, dtype=np.float32)
    w = clip_windows(track, np.array([0.0]), CFG)[0]
    assert (w[: CFG.n_fft // 2] == 0).all() and (w[CFG.n_fft // 2: CFG.n_fft // 2 + 1000] == 1).all()
    assert (w[CFG.n_fft // 2 + 1000:] == 0).all()


def test_rms_dbfs():
    assert rms_dbfs(np.zeros(100)) == float("-inf")
    assert rms_dbfs(np.ones(100)) == pytest.approx(0.0)
    assert rms_dbfs(sine(100, 16000, 1.0, amp=1.0)) == pytest.approx(-3.01, abs=0.05)
