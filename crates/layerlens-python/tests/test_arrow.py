"""The Ray extractor and the Arrow tables it returns, without a cluster: the
schema is the CLI's Parquet schema, tensor columns work as image columns do,
and bad batches say what is missing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import layerlens
import layerlens.ray
from conftest import fashion_images, run_cli


def test_a_tensor_column_batch_gives_the_extract_values(model_dir):
    x = (fashion_images(6).astype(np.float32) / 255.0)[:, None]
    ex = layerlens.ray.Extractor(model=str(model_dir), layers="conv2d_1,dense", apply="mean",
                                 tensor_column="x", threads=2)
    # Ray hands a tensor column over as one read-only array.
    x_ro = x.copy()
    x_ro.setflags(write=False)
    table = ex({"path": np.array([f"row{i}" for i in range(6)]), "x": x_ro})
    want = layerlens.Model.load(str(model_dir), threads=2).extract(x, "conv2d_1,dense", apply="mean")
    assert table.column("path").to_pylist() == [f"row{i}" for i in range(6)]
    for name, a in want.items():
        got = np.array(table.column(name).to_pylist(), dtype=np.float32)
        assert np.array_equal(got, a), name


def test_tables_have_the_cli_parquet_schema(model_dir, image_paths, tmp_path):
    out = tmp_path / "cli.parquet"
    run_cli("extract", model_dir, "--input", *image_paths[:3], "--layers", "conv2d_1,dense",
            "--apply", "mean", "--out", out)
    cli = pq.read_schema(out)
    ex = layerlens.ray.Extractor(model=str(model_dir), layers=["conv2d_1", "dense"], apply="mean")
    table = ex({"path": [str(p) for p in image_paths[:3]], "bytes": [p.read_bytes() for p in image_paths[:3]]})
    assert table.schema.remove_metadata().equals(cli.remove_metadata()), (table.schema, cli)
    ours = json.loads(table.schema.metadata[b"layerlens"])
    theirs = json.loads(cli.metadata[b"layerlens"])
    assert ours["shapes"] == theirs["shapes"] == {"conv2d_1": [64], "dense": [10]}
    # Same rows as the CLI's single file (which runs one image per pass).
    cli_table = pq.read_table(out)
    for name in ["conv2d_1", "dense"]:
        np.testing.assert_allclose(np.array(table.column(name).to_pylist()),
                                   np.array(cli_table.column(name).to_pylist()), rtol=0, atol=1e-6)


def test_bad_batches_say_what_is_missing(model_dir):
    ex = layerlens.ray.Extractor(model=str(model_dir), layers="dense")
    with pytest.raises(KeyError, match="no 'path' column.*include_paths=True"):
        ex({"bytes": [b""]})
    with pytest.raises(KeyError, match="no 'bytes' column"):
        ex({"path": ["a"]})
    with pytest.raises(layerlens.LayerlensError, match=r"image\[0\]: cannot decode image"):
        ex({"path": ["a"], "bytes": [b"not a png"]})
    # pyarrow tables are accepted as batches too.
    with pytest.raises(KeyError, match="no 'path' column"):
        ex(pa.table({"bytes": [b""]}))
