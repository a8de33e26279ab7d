"""Ingestion on a Dask cluster (issue 18): a scheduler and two worker processes started by the test
with the `dask` command line ingest the real clips and the hostile files to the same manifest and
rejects as the local process pool; a Dask worker killed mid-file costs that file alone; a run of
either executor is resumed by the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client

from pemt_pipeline.kill_points import KILL_AFTER_SHARDS
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import load_shard
from tests.conftest import env_params, make_project_copy, run_kedro, shared_data
from tests.media.makers import make_video
from tests.test_ingestion_hostile import EXPECTED_ACCEPTED, EXPECTED_REJECTS

# The test environment's ingestion (conf/test: 4-frame clips at 32 px) with 3 clips at 10 fps, as the
# hostile-file tests; 2 local workers for the process pool (and for a local Dask cluster).
PARAMS = {"fps": 10, "clips_per_video": 3, "workers": 2}
SMALL = env_params("ingestion", PARAMS)
DASK_CLI = str(Path(sys.executable).with_name("dask"))
MARKERS = "PEMT_TEST_DASK_MARKERS"  # tests/dask_hanging_victim.py (preloaded by the workers, not imported here)


@dataclass
class Cluster:
    address: str
    client: Client
    markers: Path


def _wait_for(condition, timeout_s: float, what: str, logs: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if time.monotonic() > deadline:
            logs = sorted(logs.glob("*.log")) if logs else []
            tails = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)
            pytest.fail(f"{what} did not happen within {timeout_s:g} s{tails}")
        time.sleep(0.1)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (one thread each) on localhost, started in a
    folder of their own (not the test's working folder). One worker death rejects the file it held
    (allowed-failures 0). The workers preload tests/dask_hanging_victim.py."""
    root = tmp_path_factory.mktemp("dask_cluster")
    markers = root / "markers"
    markers.mkdir()
    scheduler_file = root / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0", MARKERS: str(markers)}
    commands = [[DASK_CLI, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)]]
    commands += [[DASK_CLI, "worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--nthreads",
                  "1", "--name", f"w{k}", "--no-dashboard", "--local-directory", str(root / f"w{k}"),
                  "--preload", str(Path(__file__).with_name("dask_hanging_victim.py"))] for k in range(2)]
    procs = []
    try:
        for k, command in enumerate(commands):
            with open(root / f"{command[1]}{k}.log", "w") as log:
                procs.append(subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            if k == 0:
                _wait_for(scheduler_file.exists, 60, "the scheduler's start", root)
        client = Client(scheduler_file=str(scheduler_file), set_as_default=False, timeout=60)
        try:
            client.wait_for_workers(2, timeout=120)
            yield Cluster(json.loads(scheduler_file.read_text())["address"], client, markers)
        finally:
            client.close()
    finally:
        for proc in reversed(procs):  # the workers first, then the scheduler
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the one it started
                proc.wait()


def _build_folder(folder: Path) -> Path:
    """The hostile-file tests' folder (tests/test_ingestion_hostile.py) plus the real clips in real/."""
    (folder / "sub dir").mkdir(parents=True)
    good = make_video(folder / "good.mp4", seconds=2.0)
    make_video(folder / "sub dir" / "naïve clip ü 01.mp4", seconds=2.0)
    make_video(folder / "odd.mkv", size=(97, 55), codec="ffv1", pix_fmt="yuv444p", seconds=2.0)
    make_video(folder / "rotated.mp4", size=(64, 32), rotation=90, seconds=2.0)
    make_video(folder / "short.mp4", seconds=0.3)
    make_video(folder / "noaudio.mp4", seconds=2.0, audio=None)
    blob = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(blob[: len(blob) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.avi").write_bytes(bytes(range(256)) * 40)
    (folder / "folder.mp4").mkdir()
    shutil.copy(good, folder / "folder.mp4" / "inside.mp4")
    pd.DataFrame({"path": ["good.mp4", "gone.mp4"], "label": ["a", "b"], "split": ["train", "test"]}).to_csv(
        folder / "labels.csv", index=False)
    real = shared_data("real_clips")
    shutil.copytree(real, folder / "real", ignore=shutil.ignore_patterns("*.tsv"))
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The drivers' working folder: shard folders are given relative to it, which the Dask workers
    (started elsewhere) resolve as the driver does."""
    path = tmp_path_factory.mktemp("driver")
    cwd = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(cwd)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_index(VideoSource(_build_folder(tmp_path_factory.mktemp("media") / "videos")))


def _ingest(index: pd.DataFrame, shard_dir: str, **params):
    return ingest_all(index, IngestConfig.from_dict({**SMALL, "shard_dir": shard_dir, **params}))


def _dask(cluster: Cluster) -> dict:
    return {"executor": "dask", "dask_scheduler": cluster.address}


@pytest.fixture(scope="module")
def both(cluster, workdir, index):
    """The folder ingested by the process pool (shards_pool) and by the cluster (shards_dask)."""
    return _ingest(index, "shards_pool"), _ingest(index, "shards_dask", **_dask(cluster))


def _comparable(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.assign(shard_path=manifest["shard_path"].map(lambda p: Path(p).name))


def test_the_cluster_ingests_as_the_process_pool(both, workdir):
    (pool, pool_rejects, pool_counts), (dask, dask_rejects, dask_counts) = both
    assert dask_counts == pool_counts and pool_counts["skipped"] == 0
    pd.testing.assert_frame_equal(_comparable(dask), _comparable(pool))  # content hashes, clips, shapes, ...
    pd.testing.assert_frame_equal(dask_rejects, pool_rejects)  # source_path, reason and detail
    outcome = dict(zip(pool_rejects["source_path"], pool_rejects["reason"]))
    assert EXPECTED_REJECTS.items() <= outcome.items() and EXPECTED_ACCEPTED <= set(pool["source_path"])
    assert {"real/mmaction2_test.wav", "real/tiny-ucf101_v_Basketball_g01_c01.avi"} <= outcome.keys()
    assert len(pool) == len(EXPECTED_ACCEPTED) + 8
    for row in dask.itertuples():  # written by the workers where the driver said (a relative folder)
        assert row.shard_path.startswith("shards_dask/")
        ours = load_shard(workdir / row.shard_path)
        theirs = load_shard(workdir / "shards_pool" / Path(row.shard_path).name)
        assert ours.keys() == theirs.keys() and ours["frames"].shape[:2] == (3, 4), row.source_path
        for name in ours:
            assert (ours[name] == theirs[name]).all(), (row.source_path, name)


def _resumed(first: dict, then: dict, index: pd.DataFrame, shard_dir: str, reference: pd.DataFrame):
    """A partial run (every other video) by one executor, then the whole folder by the other."""
    _, _, part = _ingest(index.iloc[::2], shard_dir, **first)
    manifest, _, counts = _ingest(index, shard_dir, **then)
    assert part["accepted"] > 0 and counts["skipped"] == part["accepted"]
    assert counts["accepted"] == len(reference) - part["accepted"]
    pd.testing.assert_frame_equal(_comparable(manifest), _comparable(reference))


def test_either_executor_resumes_the_other(both, cluster, index):
    reference = both[0][0]
    _resumed(_dask(cluster), {}, index, "shards_dask_then_pool", reference)
    _resumed({}, _dask(cluster), index, "shards_pool_then_dask", reference)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


def test_a_dask_worker_killed_mid_file_costs_that_file(cluster, workdir, tmp_path):
    """The victim (the largest file: first, in a batch of two) hangs; each Dask worker holding it is
    SIGKILLed. The lost batch goes again item by item, and the victim alone is rejected."""
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "victim.mp4", seconds=3.0)
    others = [f"v{k:02d}.mp4" for k in range(17)]
    for name in others:
        make_video(folder / name, seconds=1.0)
    killed, stop = [], threading.Event()

    def kill_each_worker_holding_the_victim():
        seen = set()
        while not stop.wait(0.05):
            for marker in set(cluster.markers.glob("*.*")) - seen:
                seen.add(marker)
                subprocess_pid, worker_pid = map(int, marker.name.split("."))
                os.kill(worker_pid, signal.SIGKILL)
                killed.append(subprocess_pid)

    killer = threading.Thread(target=kill_each_worker_holding_the_victim, daemon=True)
    killer.start()
    start = time.monotonic()
    try:
        manifest, rejects, counts = _ingest(build_index(VideoSource(folder)), str(tmp_path / "shards"),
                                            file_timeout_s=100, **_dask(cluster))
    finally:
        stop.set()
        killer.join(5)
    assert time.monotonic() - start < 90, "the run must end soon after the kills"
    assert len(killed) == 2, "once in its batch, once alone"
    assert list(manifest["source_path"]) == others and counts == {"accepted": 17, "skipped": 0, "rejected": 1}
    victim = rejects.set_index("source_path").loc["victim.mp4"]
    assert victim.reason == "worker_died" and "Dask worker" in victim.detail, victim.detail
    for pid in killed:  # the subprocess decoding the file died with its Dask worker (no orphan left running)
        _wait_for(lambda: not _alive(pid), 10, f"the end of the victim's subprocess {pid}")
    cluster.client.wait_for_workers(2, timeout=120)  # the Nannies restarted the workers


def test_a_killed_run_on_a_local_dask_cluster_is_resumed_by_the_pool(tmp_path, monkeypatch):
    """`dask_scheduler: null`: a LocalCluster of `workers` processes (here one), killed with the
    driver (its process group) after its 2nd shard, as a crash would; the pool then finishes the run."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for k in range(5):
        make_video(folder / f"v{k}.mp4", seconds=1.0 + 0.25 * k)
    project = make_project_copy(tmp_path / "project")
    shards = project / "data/02_intermediate/shards"
    command = [sys.executable, "-m", "kedro", "run", "--pipelines", "ingestion", "--env", "test", "--params",
               f"ingestion.source_dir={folder},ingestion.workers=1,ingestion.executor=dask"]
    proc = subprocess.run(command, cwd=project, capture_output=True, text=True, start_new_session=True, timeout=300,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", KILL_AFTER_SHARDS: "2"})
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed:\n{proc.stderr[-3000:]}"
    assert len(list(shards.glob("*.safetensors"))) == 2
    assert not (project / "data/03_primary/manifest.parquet").exists()

    monkeypatch.chdir(project)
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(folder), "workers": 1}}, env="test")
    summary = json.loads((project / "data/08_reporting/ingestion_summary.json").read_text())
    assert (summary["skipped"], summary["accepted"], summary["rejected"]) == (2, 3, 0)
    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    assert len(manifest) == 5 and manifest["shard_path"].str.startswith("data/02_intermediate/shards/").all()


def test_executor_parameters_are_checked():
    with pytest.raises(ValueError, match="ingestion.executor"):
        IngestConfig.from_dict({"executor": "threads"})
    with pytest.raises(ValueError, match="ingestion.dask_scheduler"):
        IngestConfig.from_dict({"dask_scheduler": "tcp://host:8786"})  # without executor: dask
    with pytest.raises(ValueError, match="ingestion.dask_scheduler"):
        IngestConfig.from_dict({"executor": "dask", "dask_scheduler": " "})
    base = IngestConfig.from_dict({})
    dask = IngestConfig.from_dict({"executor": "dask", "dask_scheduler": "tcp://host:8786"})
    assert dask.params_hash == base.params_hash  # not part of a shard's identity
