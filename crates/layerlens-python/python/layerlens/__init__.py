"""layerlens: every intermediate layer of a CNN as a first-class output.

    >>> import numpy as np, layerlens
    >>> model = layerlens.Model.load("zoo:seed_cnn")
    >>> acts = model.extract(np.zeros((2, 1, 28, 28), np.float32), ["conv2d", "dense"])
    >>> acts["conv2d"].shape
    (2, 32, 26, 26)

Models open from the same specs as the CLI's MODEL argument (``model.onnx``, a
directory written by ``Model.save``, ``zoo:NAME[=WEIGHTS]``); images are decoded
and preprocessed in Rust, so the numbers equal the CLI's. Computation releases
the GIL. ``layerlens.ray`` and ``layerlens.spark`` run extraction on clusters.
See docs/python.md.
"""

from ._layerlens import HookHandle, LayerlensError, Model, __version__, cpu_paths

__all__ = ["Model", "HookHandle", "LayerlensError", "cpu_paths", "__version__"]
