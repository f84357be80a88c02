"""Spark: layerlens for ``DataFrame.mapInArrow``.

    from pyspark.sql import SparkSession
    import layerlens.spark
    spark = SparkSession.builder.master("local[2]").getOrCreate()
    df = spark.read.format("binaryFile").load("photos/")
    fn, schema = layerlens.spark.map_in_arrow("zoo:resnet18=r18.pth", ["layer4"],
                                              preprocess="imagenet", apply="mean")
    df.mapInArrow(fn, schema).write.parquet("feats/")

The model is opened once per Python worker process and cached there (Spark
reuses workers with ``spark.python.worker.reuse``, the default); rows come out
in the CLI's Parquet schema: ``path`` plus one ``array<float>`` per layer.
"""

from __future__ import annotations

import os
import uuid

from . import _arrow
from ._layerlens import Model

# Per Python worker: models opened so far, by the key map_in_arrow gave them.
_MODELS: dict = {}


def map_in_arrow(
    model,
    layers,
    image_column: str = "content",
    path_column: str = "path",
    preprocess: str = "unit",
    apply: str | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
):
    """Returns ``(fn, schema)`` for ``df.mapInArrow(fn, schema)``.

    ``model`` is a MODEL spec or a ``layerlens.Model``; ``layers`` names, globs or
    ``"all"``. The layer names are resolved here, on the driver, so the schema is
    known before any task runs. ``image_column``/``path_column`` default to the
    columns of ``spark.read.format("binaryFile")``.
    """
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    if isinstance(model, Model):
        driver_model, spec = model, None
    else:
        spec = os.fspath(model)
        driver_model = Model.load(spec, threads=1)
    # The names the selectors pick, in output order: a cheap extraction plan.
    names = list(driver_model.submodel(layers).outputs)
    names = [n for n, _ in names]
    key = (spec, threads) if spec is not None else uuid.uuid4().hex
    shipped = None if spec is not None else driver_model
    schema = StructType(
        [StructField("path", StringType(), False)]
        + [StructField(n, ArrayType(FloatType(), containsNull=False), False) for n in names]
    )
    settings = {
        "model": spec or repr(driver_model),
        "layers": layers if isinstance(layers, str) else ",".join(layers),
        "apply": apply or "",
        "preprocess": preprocess,
    }

    def extract_batches(batches):
        m = _MODELS.get(key)
        if m is None:
            m = shipped if shipped is not None else Model.load(spec, threads=threads)
            _MODELS[key] = m
        for batch in batches:
            if batch.num_rows == 0:
                continue
            paths = batch.column(path_column).to_pylist()
            images = batch.column(image_column).to_pylist()
            acts = m.extract_images(
                images, layers, preprocess=preprocess, apply=apply, batch_size=batch_size
            )
            # Output columns in the schema's order, named as the schema names them.
            acts = {n: acts[n] for n in names}
            yield from _arrow.to_table(paths, acts, settings).to_batches()

    return extract_batches, schema
