"""Object storage (`pemt_pipeline.storage`) against a real S3 API: moto's server on a free localhost
port. The videos, the shards, the manifest and the model live in a bucket; ingestion matches a
local-disk ingestion of the same files, a re-run downloads no video, training and evaluation read
the shards through the bounded local cache, and no credential reaches a log, an output or an object."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3fs
import torch
import yaml
from kedro.io import DatasetError
from moto.server import ThreadedMotoServer

from pemt_pipeline import storage
from pemt_pipeline.atomic import WriteError
from pemt_pipeline.datasets import ClipEmbeddingsDataset, PEMTModelDataset, ReportDataset
from pemt_pipeline.features.dataset import AugmentConfig, ShardClipDataset
from pemt_pipeline.features.store import ClipEmbeddings
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.models import ModelConfig, PEMTModel, TrainedModel
from pemt_pipeline.reporting import Report
from pemt_pipeline.media.shards import SHARD_SUFFIX, ShardReader, ShardStore, missing_shards, read_metadata
from tests.conftest import env_params, make_project_copy, run_kedro, shared_data

# Credentials moto accepts (any); distinctive, so that a leak anywhere is found by a plain search.
KEY = "pemtTESTKEYc0ffee4d1"
SECRET = "pemtTESTSECRETbadc0de99x"
BUCKET = "pemt-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Requests(logging.Handler):
    """The HTTP requests moto's server answers (its werkzeug access log), e.g. 'GET /bucket/key'."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        match = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP', record.getMessage())  # colours or not
        if match:
            self.lines.append(f"{match[1]} {match[2]}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with one bucket; this process's storage options point at it."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    requests = Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # counted, not printed
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    cache = tmp_path_factory.mktemp("object_cache")
    storage.configure({"s3": options}, cache_dir=cache, cache_max_gb=1.0)
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    try:
        yield type("S3", (), {"fs": fs, "options": options, "port": port, "cache": cache, "requests": requests})
    finally:
        storage.configure(None)
        werkzeug.removeHandler(requests)
        server.stop()


def _url(*parts: str) -> str:
    return "/".join([f"s3://{BUCKET}", *parts])


def _upload_folder(fs, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/{prefix}/{path.relative_to(local).as_posix()}")


# --------------------------------------------------------------------------- the library
def test_urls_redaction_and_refused_userinfo():
    assert storage.is_url("s3://b/x") and storage.is_url("memory://x")
    assert not storage.is_url("data/x") and not storage.is_url("file:///tmp/x") and not storage.is_url(Path("s3:/x"))
    assert storage.redact("ftp://user:pw@host/x") == "ftp://***@host/x"
    assert storage.redact("s3://bucket/x") == "s3://bucket/x"
    with pytest.raises(ValueError) as err:
        storage.refuse_userinfo("ftp://user:pw@host/x", "ingestion.shard_dir")
    assert "pw" not in str(err.value) and "credentials.yml" in str(err.value)
    assert storage.join("s3://b/x/", "y.safetensors") == "s3://b/x/y.safetensors"
    assert storage.join("data/x", "y") == Path("data/x/y")
    flat = storage.storage_options_by_protocol({"key": "k", "secret": "s"}, "s3")
    assert flat == {"s3": {"key": "k", "secret": "s"}}
    assert storage.storage_options_by_protocol({"gcs": {"token": "t"}}) == {"gcs": {"token": "t"}}


def test_writing_publishes_whole_objects_and_the_cache_stays_bounded(s3, tmp_path):
    target = _url("lib", "a.bin")
    with storage.writing(target) as tmp:
        tmp.write_bytes(b"x" * 1000)
        assert not s3.fs.exists(f"{BUCKET}/lib/a.bin")  # nothing visible while it is written
    assert s3.fs.cat_file(f"{BUCKET}/lib/a.bin") == b"x" * 1000
    with pytest.raises(RuntimeError), storage.writing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert s3.fs.cat_file(f"{BUCKET}/lib/a.bin") == b"x" * 1000  # the previous version stays
    assert not list((storage.cache_config().root / "uploads").iterdir())  # no temporary left
    assert storage.read_range(target, 10, 14) == b"xxxx"
    assert list(storage.listing(_url("lib"))) == ["a.bin"]

    # A cache of 5 kB holds the most recently used of 2 kB copies; a changed object is fetched again.
    cache = storage.ObjectCache(tmp_path / "cache", max_bytes=5000)
    for k in range(6):
        s3.fs.pipe_file(f"{BUCKET}/lib/c{k}.bin", bytes([k]) * 2000)
    for k in range(6):
        assert cache.local_copy(_url("lib", f"c{k}.bin")).read_bytes() == bytes([k]) * 2000
        assert cache.size() <= 5000
    assert cache.size() > 0
    s3.fs.pipe_file(f"{BUCKET}/lib/c5.bin", b"new" * 10)
    assert cache.local_copy(_url("lib", "c5.bin")).read_bytes() == bytes([5]) * 2000  # checked once per process
    assert storage.ObjectCache(tmp_path / "cache", 5000).local_copy(_url("lib", "c5.bin")).read_bytes() == b"new" * 10
    with pytest.raises(FileNotFoundError) as err:
        cache.local_copy(_url("lib", "nothing.bin"))
    assert SECRET not in str(err.value) and "nothing.bin" in str(err.value)


def test_an_upload_without_credentials_is_a_write_error_naming_the_object(s3, tmp_path):
    local = tmp_path / "f.bin"
    local.write_bytes(b"1")
    with pytest.raises(WriteError) as err:
        storage.put_whole(local, "s3://no-such-bucket-pemt/x.bin", {"client_kwargs": s3.options["client_kwargs"]})
    assert "no-such-bucket-pemt/x.bin" in str(err.value) and SECRET not in str(err.value)


def test_report_and_model_datasets_upload_whole_files(s3, tmp_path):
    report = ReportDataset(_url("report"), stem="fusion")
    assert not report.exists()
    report.save(Report(html="<p>hi</p>", markdown="# hi\n![](figures/a.png)", figures={"a.png": b"PNG"}))
    assert report.exists()
    assert sorted(storage.listing(_url("report"), recursive=True)) == ["figures/a.png", "fusion.html", "fusion.md"]
    assert s3.fs.cat_file(f"{BUCKET}/report/fusion.html") == b"<p>hi</p>"
    model = PEMTModelDataset(_url("models", "m.pt"))
    with pytest.raises(DatasetError, match="run `kedro run --pipelines training` first"):
        model.load()
    trained = TrainedModel(PEMTModel(ModelConfig.from_dict(env_params("model"))))
    model.save(trained)
    loaded = model.load()
    for name, value in trained.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert "m.pt" in str(model) and SECRET not in str(model)


# --------------------------------------------------------------------------- ingestion
def _ingest(source, shard_dir, workers=2, **overrides):
    cfg = IngestConfig.from_dict(env_params("ingestion", {"shard_dir": str(shard_dir), "workers": workers,
                                                          "progress": False, **overrides}))
    index = build_index(VideoSource(source), cfg.extensions, cfg.test_fraction, cfg.split_seed,
                        layout=cfg.label_layout)
    return index, *ingest_all(index, cfg)


@pytest.fixture(scope="module")
def real_ingested(s3, tmp_path_factory):
    """The real clips ingested from disk to disk, and from the bucket to the bucket."""
    clips = shared_data("real_clips")
    _upload_folder(s3.fs, clips, "real")
    local = _ingest(clips, tmp_path_factory.mktemp("local") / "shards")
    s3.requests.lines.clear()
    remote = _ingest(_url("real"), _url("real_shards"))
    return local, remote, list(s3.requests.lines)


def test_ingestion_from_and_to_s3_matches_a_local_ingestion(real_ingested, s3):
    (_, local, local_rejects, local_counts), (index, remote, remote_rejects, remote_counts), _ = real_ingested
    assert index["path"].str.startswith(f"s3://{BUCKET}/real/").all()
    assert remote_counts == local_counts and remote_counts["accepted"] >= 6
    columns = ["video_id", "source_path", "content_hash", "n_clips", "duration_s", "width", "height", "audio_rate",
               "shard_bytes", "frame_bytes", "label", "split"]
    pd.testing.assert_frame_equal(remote[columns], local[columns])
    assert remote["shard_path"].tolist() == [_url("real_shards", f"{v}{SHARD_SUFFIX}") for v in remote["video_id"]]
    pd.testing.assert_frame_equal(remote_rejects[["source_path", "reason"]], local_rejects[["source_path", "reason"]])
    assert not remote_rejects["detail"].str.contains(str(s3.cache)).any()  # names the object, not the download
    for row_local, row_remote in zip(local.itertuples(), remote.itertuples()):
        a, b = ShardReader(row_local.shard_path).read(), ShardReader(row_remote.shard_path).read()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{row_local.video_id} {name}")


def test_the_manifest_names_only_whole_shards_and_nothing_else_is_left(real_ingested, s3):
    _, (_, remote, _, _), _ = real_ingested
    objects = storage.listing(_url("real_shards"), recursive=True)
    assert sorted(objects) == sorted(f"{v}{SHARD_SUFFIX}" for v in remote["video_id"])  # no temporary, no extra
    assert missing_shards(remote["shard_path"]) == []
    for row in remote.itertuples():
        meta = read_metadata(row.shard_path)  # the header, by ranged reads
        assert json.loads(meta["record"])["content_hash"] == row.content_hash
    assert ShardStore(_url("real_shards")).video_ids() == sorted(remote["video_id"])
    assert not list((storage.cache_config().root / "downloads").glob("*/*"))  # downloads deleted


def test_a_rerun_downloads_no_video_and_reads_only_shard_headers(real_ingested, s3):
    _, (_, remote, rejects, _), first_requests = real_ingested
    accepted = {f"GET /{BUCKET}/real/{p}" for p in remote["source_path"]}
    assert accepted <= set(first_requests)  # the first run downloads each video
    s3.fs.pipe_file(f"{BUCKET}/real_shards/gone-0000.safetensors", b"a video no longer in the folder")
    s3.requests.lines.clear()
    _, again, _, counts = _ingest(_url("real"), _url("real_shards"))
    assert counts["accepted"] == 0 and counts["skipped"] == len(remote)
    pd.testing.assert_frame_equal(again, remote)
    assert sorted(storage.listing(_url("real_shards"))) == sorted(f"{v}{SHARD_SUFFIX}" for v in remote["video_id"])
    # an up-to-date video costs one metadata request (HEAD), no byte of it; rejected videos have no
    # shard, so they are opened again (as on a local disk)
    assert not accepted & set(s3.requests.lines), "the re-run downloaded videos it had ingested"
    assert {f"HEAD /{BUCKET}/real/{p}" for p in remote["source_path"]} <= set(s3.requests.lines)
    shard_gets = [line for line in s3.requests.lines if line.startswith(f"GET /{BUCKET}/real_shards/")]
    assert len(shard_gets) == len(remote) + len(rejects)  # one ranged read of each header (404: no shard)


# --------------------------------------------------------------------------- the Kedro chain
def _s3_env(project: Path, options: dict, cache_max_gb: float) -> None:
    """conf/s3test: the test environment with the shards, the manifest, the rejects, the ingestion
    summary and the model in the bucket, the credentials in credentials.yml."""
    env = project / "conf" / "s3test"
    shutil.copytree(project / "conf" / "test", env)
    (env / "globals.yml").write_text(yaml.safe_dump({"paths": {"shards": _url("chain", "shards")}}))
    (env / "credentials.yml").write_text(yaml.safe_dump({storage.CREDENTIALS_KEY: options}))
    (env / "parameters_storage.yml").write_text(yaml.safe_dump({"storage": {"cache_max_gb": cache_max_gb}}))
    parquet, json_ = "pemt_pipeline.datasets.AtomicParquetDataset", "pemt_pipeline.datasets.AtomicJSONDataset"
    catalog = {
        "manifest": {"type": parquet, "filepath": _url("chain", "manifest.parquet")},
        "rejects": {"type": parquet, "filepath": _url("chain", "rejects.parquet")},
        "ingestion_summary": {"type": json_, "filepath": _url("chain", "ingestion_summary.json")},
        "pretrained_model": {"type": "pemt_pipeline.datasets.PEMTModelDataset",
                             "filepath": _url("chain", "pretrained_model.pt")},
        "clip_embeddings": {"type": "pemt_pipeline.datasets.ClipEmbeddingsDataset",
                            "path": _url("chain", "clip_embeddings"), "local_dir": "data/04_feature/clip_embeddings"},
    }
    (env / "catalog.yml").write_text(yaml.safe_dump(catalog))


@pytest.mark.slow
def test_kedro_chain_on_dask_reads_and_writes_the_bucket_without_leaking_credentials(s3, tmp_path, monkeypatch):
    project = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(project)
    run_kedro(project, ["demo_data"], env="test")
    storage.configure({"s3": s3.options}, cache_dir=s3.cache, cache_max_gb=1.0)  # the run's hook set none
    _upload_folder(s3.fs, project / "data/01_raw/demo", "demo")
    shutil.rmtree(project / "data/01_raw/demo")  # nothing local to fall back on
    bound_gb = 60e3 / 1e9  # 60 kB: smaller than the shards one epoch reads, so the cache evicts
    _s3_env(project, s3.options, bound_gb)

    # A fresh process: its storage options come from credentials.yml alone (not this process's).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_", "PEMT_STORAGE_", "AWS_"))}
    env.update(KEDRO_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", COLUMNS="400")  # COLUMNS: rich wraps no line
    cmd = [sys.executable, "-m", "kedro", "run", "--env", "s3test",
           "--pipelines", "ingestion,embedding,negatives,training,evaluation", "--to-nodes", "summarise_evaluation",
           "--params", f"ingestion.source_dir={_url('demo')},ingestion.executor=dask"]  # a local Dask cluster
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert re.search(r"ingesting 8 file\(s\) into s3://\S+ \(dask, \d+ threads?\)", output), output[-4000:]

    manifest = pd.read_parquet(_url("chain", "manifest.parquet"), storage_options=s3.options)
    assert len(manifest) == 8 and manifest["shard_path"].str.startswith(_url("chain", "shards") + "/").all()
    shards = sorted(f"{v}{SHARD_SUFFIX}" for v in manifest["video_id"])
    assert sorted(storage.listing(_url("chain", "shards"))) == shards
    assert s3.fs.isfile(f"{BUCKET}/chain/pretrained_model.pt") and s3.fs.isfile(f"{BUCKET}/chain/rejects.parquet")
    training = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert training["steps"] == 12
    evaluation = json.loads((project / "data/08_reporting/evaluation_summary.json").read_text())
    assert evaluation
    local_shards = project / "data/02_intermediate/shards"
    assert not local_shards.exists() or not any(local_shards.iterdir())

    # The embedding store's reference copy is the bucket's: a machine without it downloads it whole.
    assert sorted(storage.listing(_url("chain", "clip_embeddings"))) == ["audio.npy", "clips.parquet", "meta.json",
                                                                         "visual.npy"]
    elsewhere = ClipEmbeddingsDataset(_url("chain", "clip_embeddings"), local_dir=str(tmp_path / "elsewhere"))
    here = ClipEmbeddings(project / "data/04_feature/clip_embeddings")
    np.testing.assert_array_equal(elsewhere.load().load_array("visual"), here.load_array("visual"))
    s3.requests.lines.clear()
    pd.testing.assert_frame_equal(elsewhere.load().clips, here.clips)
    assert not [line for line in s3.requests.lines if line.startswith("GET /pemt-bucket/chain/clip_embeddings/")]

    # Training and evaluation read the shards through the bounded cache.
    cache = storage.ObjectCache(project / "data/.object_cache", int(bound_gb * 1e9))
    sizes = [s for _, s, _ in cache.entries()]
    assert sizes and sum(sizes) <= cache.max_bytes + max(sizes)  # the file just fetched may stand alone

    # No credential in the run's output, in any file it wrote, or in any object of the bucket.
    for secret in (KEY, SECRET):
        assert secret not in output
        for path in project.rglob("*"):
            if path.is_file() and "conf" not in path.relative_to(project).parts:
                assert secret.encode() not in path.read_bytes(), path
        for name in s3.fs.find(BUCKET):
            assert secret.encode() not in s3.fs.cat_file(name), name


def test_training_items_read_remote_shards_through_the_bounded_cache(real_ingested, s3, tmp_path, monkeypatch):
    (_, local, _, _), (_, remote, _, _), _ = real_ingested
    bound = int(remote["shard_bytes"].max() * 2.5)  # room for two shards of the eight
    monkeypatch.setenv(storage.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(storage.CACHE_MAX_GB_ENV, repr(bound / 1e9))
    augment = AugmentConfig.from_dict(env_params("training")["augment"])
    s3.requests.lines.clear()
    dataset = ShardClipDataset(remote, augment, train=True, seed=3)  # one listing of the shard folder
    reference = ShardClipDataset(local, augment, train=True, seed=3)
    for epoch in range(2):
        dataset.set_epoch(epoch), reference.set_epoch(epoch)
        for i in range(len(dataset)):
            item, expected = dataset[i], reference[i]
            for name in expected:
                assert torch.equal(item[name], expected[name]), (epoch, i, name)
            assert storage.object_cache().size() <= bound
    shard_requests = [line for line in s3.requests.lines if f"/{BUCKET}/real_shards" in line]
    assert not [line for line in shard_requests if line.startswith("HEAD")]  # versions came with the listing
    gets = [line for line in shard_requests if line.startswith("GET /")]
    assert len(gets) == 2 * len(remote)  # each epoch fetches each shard again: the cache holds two
