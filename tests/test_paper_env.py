"""`--env paper`: the paper's clip configuration layered on the base parameters."""

import shutil

import pandas as pd

from pemt_pipeline.media.shards import load_shard
from tests.conftest import run_kedro


def test_paper_environment_ingests_with_the_papers_shapes(project, real_clips, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(real_clips / "moviepy_chaplin.mp4", folder)  # 9.6 s, 640x360, 25 fps
    run_kedro(project, ["ingestion"], {"ingestion": {"source_dir": str(folder), "workers": 1}}, env="paper")
    manifest = pd.read_parquet("data/03_primary/manifest.parquet")
    shard = load_shard(project / manifest.loc[0, "shard_path"])
    # 10 clips x 32 frames (stride 2 at 30 fps), short side 160; 80 mel bins x 128 frames at 44.1 kHz
    assert shard["frames"].shape == (10, 32, 160, 284, 3)
    assert shard["log_mel"].shape == (10, 80, 128)
    assert manifest.loc[0, "clips_overlap"]  # 9.6 s < 10 x 2.13 s


def test_paper_parameters_keep_base_siblings(project):
    from kedro.config import OmegaConfigLoader

    from pemt_pipeline.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(project / "conf"), env="paper", runtime_params={"ingestion": {"workers": 3}},
                               **{k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"})
    params = loader["parameters"]["ingestion"]
    assert (params["fps"], params["frames_per_clip"], params["clips_per_video"], params["sample_rate"]) == \
        (30, 32, 10, 44100)
    assert params["placement"] == "uniform" and params["short_video_policy"] == "overlap"  # from base
    assert params["workers"] == 3 and params["shard_dir"] == "data/02_intermediate/shards"
