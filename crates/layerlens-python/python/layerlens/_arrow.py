"""Arrow tables in the CLI's Parquet schema: a ``path`` string column and one
``list<float>`` column per layer (non-null elements), with the per-sample
shapes and the settings in the schema metadata key ``layerlens``."""

from __future__ import annotations

import numpy as np

from ._layerlens import parquet_metadata


def element_type():
    """The list type of a layer column: ``list<element: float not null>``."""
    import pyarrow as pa

    return pa.list_(pa.field("element", pa.float32(), nullable=False))


def schema(layer_names, shapes=None, settings=None):
    """The Arrow schema for ``layer_names`` (with metadata when ``shapes`` is given)."""
    import pyarrow as pa

    fields = [pa.field("path", pa.string(), nullable=False)]
    fields += [pa.field(n, element_type(), nullable=False) for n in layer_names]
    metadata = None
    if shapes is not None:
        metadata = {b"layerlens": parquet_metadata(dict(settings or {}), dict(shapes)).encode()}
    return pa.schema(fields, metadata=metadata)


def to_table(paths, activations, settings=None):
    """``paths`` (one per row) and ``{layer: (N, ...) float32 array}`` as a table."""
    import pyarrow as pa

    n = len(paths)
    columns = [pa.array([str(p) for p in paths], type=pa.string())]
    shapes = {}
    for name, a in activations.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.shape[0] != n:
            raise ValueError(f"{name}: {a.shape[0]} rows for {n} paths")
        per_row = int(np.prod(a.shape[1:], dtype=np.int64))
        shapes[name] = [int(d) for d in a.shape[1:]]
        if n * per_row > np.iinfo(np.int32).max:
            raise ValueError(
                f"{name}: {n} rows of {per_row} values exceed one Arrow list array; use smaller batches"
            )
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(per_row), type=pa.int32())
        values = pa.array(a.reshape(-1), type=pa.float32())
        columns.append(pa.ListArray.from_arrays(offsets, values, type=element_type()))
    return pa.Table.from_arrays(columns, schema=schema(list(activations), shapes, settings))
