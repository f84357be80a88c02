"""Ray Data and Spark pipelines over real images, compared per path with the
CLI's Parquet output; then the same with a worker SIGKILLed mid-run: every
path exactly once, values unchanged. scripts/test-python.sh runs these inside
a loopback-only network namespace."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import layerlens
import layerlens.ray
import layerlens.spark
from conftest import run_cli

LAYERS = ["conv2d_1", "dense"]
HERE = Path(__file__).resolve().parent


def loopback_only() -> bool:
    """True inside a network namespace with nothing but lo (no route out)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only needs a route
        return False
    except OSError:
        return True


pytestmark = pytest.mark.skipif(
    not loopback_only() and os.environ.get("LAYERLENS_ALLOW_NETWORK_TESTS") != "1",
    reason="Ray and Spark bind non-loopback addresses here: run through scripts/test-python.sh",
)


def key(path: str) -> str:
    """A row's path without scheme or temporary root: 'a/00001.png'."""
    p = Path(path.removeprefix("file://").removeprefix("file:"))
    return f"{p.parent.name}/{p.name}"


def rows_by_path(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    table = pq.read_table(sorted(directory.rglob("*.parquet")))
    rows = {}
    for r in table.to_pylist():
        k = key(r["path"])
        assert k not in rows, f"{k} twice"
        rows[k] = {n: np.asarray(r[n], np.float32) for n in LAYERS}
    return rows


@pytest.fixture(scope="module")
def cli_rows(model_dir, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "feats"
    run_cli("extract", model_dir, "--input", image_dir, "--layers", ",".join(LAYERS),
            "--apply", "mean", "--format", "parquet", "--out", out)
    rows = rows_by_path(out)
    assert len(rows) == 64
    return rows


def same_rows(got, expected):
    assert sorted(got) == sorted(expected)
    for k, layers in expected.items():
        for n, v in layers.items():
            # Thread counts differ (CLI: the cores; workers: one each): summation
            # order may, so 1e-6 rather than bitwise.
            np.testing.assert_allclose(got[k][n], v, rtol=0, atol=1e-6, err_msg=f"{k} {n}")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    # Two extractor actors of one CPU each, and one more for the read tasks
    # (logical CPUs: with two, the actors starve the reads).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def ray_pipeline(ray, fn, kwargs, image_dir, out):
    ctx = ray.data.DataContext.get_current()
    # A block that fails for good must fail the job, not vanish from the output.
    assert ctx.max_errored_blocks == 0
    ds = ray.data.read_binary_files(str(image_dir), include_paths=True, file_extensions=["png"])
    ds.map_batches(fn, fn_constructor_kwargs=kwargs, batch_size=8, concurrency=2, num_cpus=1).write_parquet(str(out))


def test_ray_data_pipeline_matches_the_cli(ray_cluster, model_dir, image_dir, cli_rows, tmp_path):
    kwargs = dict(model=str(model_dir), layers=LAYERS, apply="mean")
    ray_pipeline(ray_cluster, layerlens.ray.Extractor, kwargs, image_dir, tmp_path / "ray")
    same_rows(rows_by_path(tmp_path / "ray"), cli_rows)
    # The table describes itself as the CLI's files do.
    meta = pq.read_schema(sorted((tmp_path / "ray").rglob("*.parquet"))[0]).metadata
    assert b'"shapes":{"conv2d_1":[64],"dense":[10]}' in meta[b"layerlens"]


def test_ray_actor_sigkilled_mid_run_loses_and_duplicates_nothing(
    ray_cluster, model_dir, image_dir, cli_rows, tmp_path
):
    from cluster_helpers import KillOnceExtractor

    marker = tmp_path / "killed"
    kwargs = dict(marker=str(marker), model=str(model_dir), layers=LAYERS, apply="mean")
    ray_pipeline(ray_cluster, KillOnceExtractor, kwargs, image_dir, tmp_path / "ray")
    assert marker.exists(), "no actor was killed: the test tested nothing"
    same_rows(rows_by_path(tmp_path / "ray"), cli_rows)


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2,4]")  # 2 cores, 4 attempts per task
        .appName("layerlens-test")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "8")
        # A few tasks of ~16 small files, i.e. two Arrow batches each.
        .config("spark.sql.files.maxPartitionBytes", "8k")
        .config("spark.sql.files.openCostInBytes", "0")
        .getOrCreate()
    )
    yield session
    session.stop()


def spark_pipeline(session, model_dir, image_dir, out, wrap=None):
    df = (
        session.read.format("binaryFile")
        .option("pathGlobFilter", "*.png")
        .option("recursiveFileLookup", "true")
        .load(str(image_dir))
    )
    fn, schema = layerlens.spark.map_in_arrow(str(model_dir), LAYERS, apply="mean")
    if wrap is not None:
        fn = wrap(fn)
    df.mapInArrow(fn, schema).write.parquet(str(out))


def test_spark_map_in_arrow_matches_the_cli(spark, model_dir, image_dir, cli_rows, tmp_path):
    spark_pipeline(spark, model_dir, image_dir, tmp_path / "spark")
    same_rows(rows_by_path(tmp_path / "spark"), cli_rows)


def test_spark_worker_sigkilled_mid_task_loses_and_duplicates_nothing(
    spark, model_dir, image_dir, cli_rows, tmp_path
):
    from cluster_helpers import kill_once

    marker = tmp_path / "killed"
    spark_pipeline(spark, model_dir, image_dir, tmp_path / "spark", wrap=lambda fn: kill_once(fn, str(marker)))
    assert marker.exists(), "no worker was killed: the test tested nothing"
    same_rows(rows_by_path(tmp_path / "spark"), cli_rows)
