"""Ray Data: layerlens as a callable class for ``Dataset.map_batches``.

    import ray, layerlens.ray
    ds = ray.data.read_binary_files("photos/", include_paths=True)
    feats = ds.map_batches(
        layerlens.ray.Extractor,
        fn_constructor_kwargs=dict(model="zoo:resnet18=r18.pth", layers=["layer4"],
                                   preprocess="imagenet", apply="mean"),
        batch_size=64, concurrency=2)
    feats.write_parquet("feats/")

Each actor opens the model once; every batch becomes a pyarrow table in the
CLI's Parquet schema (``path`` plus one ``list<float>`` column per layer, the
per-sample shapes in the schema metadata). Ray restarts a killed actor and
retries its batch; keep ``DataContext.max_errored_blocks`` at 0 (the default)
so that a batch that keeps failing fails the job instead of vanishing.
"""

from __future__ import annotations

import os

import numpy as np

from . import _arrow
from ._layerlens import Model


class Extractor:
    """Turns batches of images (encoded bytes + paths) or tensors into activations.

    Args:
        model: a MODEL spec (``model.onnx``, a saved directory, ``zoo:NAME[=WEIGHTS]``)
            or a ``layerlens.Model`` (pickled to the actors).
        layers: names, globs or ``"all"``, as a list or a comma-separated string.
        preprocess: ``unit``, ``imagenet`` or ``efficientnet-lite`` (images only).
        apply: a built-in Lambda per layer: ``mean``, ``max``, ``l2_normalize``, ``flatten``.
        image_column: the column of encoded images (``read_binary_files`` calls it ``bytes``).
        path_column: the column naming each row (``read_binary_files(include_paths=True)``).
        tensor_column: instead of images, a column of float32 arrays (one sample per row).
        threads: worker threads per actor (default: ``OMP_NUM_THREADS``, which Ray sets
            from the actor's ``num_cpus``).
        batch_size: samples per forward pass inside one Ray batch (default: all of it).
    """

    def __init__(
        self,
        model,
        layers,
        preprocess: str = "unit",
        apply: str | None = None,
        image_column: str = "bytes",
        path_column: str = "path",
        tensor_column: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
    ):
        if isinstance(model, Model):
            self.model = model
            spec = repr(model)
        else:
            spec = os.fspath(model)
            self.model = Model.load(spec, threads=threads)
        self.layers = layers
        self.preprocess = preprocess
        self.apply = apply
        self.image_column = image_column
        self.path_column = path_column
        self.tensor_column = tensor_column
        self.batch_size = batch_size
        self.settings = {
            "model": spec,
            "layers": layers if isinstance(layers, str) else ",".join(layers),
            "apply": apply or "",
            "preprocess": preprocess,
        }

    def __call__(self, batch):
        columns = _columns(batch)
        if self.path_column not in columns:
            raise KeyError(
                f"the batch has no '{self.path_column}' column (columns: {sorted(columns)}); "
                "use read_binary_files(..., include_paths=True) or set path_column"
            )
        paths = [str(p) for p in columns[self.path_column]]
        if self.tensor_column is not None:
            x = np.stack([np.asarray(v, dtype=np.float32) for v in columns[self.tensor_column]])
            acts = self.model.extract(x, self.layers, apply=self.apply, batch_size=self.batch_size)
        else:
            if self.image_column not in columns:
                raise KeyError(
                    f"the batch has no '{self.image_column}' column (columns: {sorted(columns)})"
                )
            images = [bytes(b) for b in columns[self.image_column]]
            acts = self.model.extract_images(
                images,
                self.layers,
                preprocess=self.preprocess,
                apply=self.apply,
                batch_size=self.batch_size,
            )
        return _arrow.to_table(paths, acts, self.settings)


def _columns(batch):
    """A Ray batch (dict of arrays, pyarrow table or pandas frame) as a dict of sequences."""
    if isinstance(batch, dict):
        return batch
    to_pydict = getattr(batch, "to_pydict", None)
    if to_pydict is not None:  # pyarrow.Table
        return to_pydict()
    to_dict = getattr(batch, "to_dict", None)
    if to_dict is not None:  # pandas.DataFrame
        return {k: list(v.values()) for k, v in to_dict().items()}
    raise TypeError(f"unsupported batch type {type(batch).__name__}")
