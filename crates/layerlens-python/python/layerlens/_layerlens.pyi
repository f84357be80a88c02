"""Type stubs of the native module (crates/layerlens-python/src/lib.rs)."""

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

Layers = str | Sequence[str]
ImageLike = str | os.PathLike[str] | bytes
Array = npt.NDArray[np.float32]

class LayerlensError(ValueError):
    """Bad input, an unknown layer (the message lists close matches), a shape
    mismatch naming both layers, an unsupported op or attribute."""

class CamResult(TypedDict):
    heatmap: Array
    raw: Array
    class_index: int
    score: float

class HookHandle:
    """Keeps a forward hook registered; ``remove()`` (or leaving a ``with``) removes it."""
    def remove(self) -> None: ...
    def __enter__(self) -> HookHandle: ...
    def __exit__(self, *exc: object) -> None: ...

class Model:
    """A model whose every node is an output. Pickles (graph + weights)."""
    @staticmethod
    def load(
        spec: str,
        *,
        threads: int | None = None,
        input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None,
        dims: dict[str, int] | None = None,
        bind: dict[str, str] | None = None,
    ) -> Model:
        """``model.onnx``, a Keras ``.keras``/``.h5`` file, a directory written by ``save``,
        or ``zoo:NAME[=WEIGHTS]``.
        ``threads``: else ``LAYERLENS_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the cores.
        ``input_shape``/``dims``: sizes an ONNX file leaves symbolic (``--input-shape``, ``--dim``).
        ``bind``: Keras Lambda layer -> layerlens Lambda, e.g.
        ``{"spatial_mean": 'mean({"axes": [2, 3]})'}`` (``--bind``)."""
    @property
    def name(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def node_names(self) -> list[str]: ...
    @property
    def inputs(self) -> list[tuple[str, tuple[int | None, ...]]]:
        """``(name, shape)`` per input, ``None`` for the batch axis."""
    @property
    def outputs(self) -> list[tuple[str, tuple[int | None, ...]]]: ...
    def summary(self) -> str: ...
    def extract(
        self,
        x: npt.ArrayLike,
        layers: Layers,
        *,
        apply: str | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Array]:
        """Activations of the selected layers for a float32 NCHW batch."""
    def extract_images(
        self,
        images: ImageLike | Iterable[ImageLike],
        layers: Layers,
        *,
        preprocess: str = "unit",
        apply: str | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Array]:
        """As ``extract``, from image paths or encoded bytes, preprocessed as the CLI does."""
    def preprocess(
        self, images: ImageLike | Iterable[ImageLike], *, preprocess: str = "unit"
    ) -> Array: ...
    def cam(
        self,
        image: ImageLike | Array,
        layer: str,
        *,
        method: str = "gradcam++",
        class_index: int | None = None,
        preprocess: str = "unit",
    ) -> CamResult:
        """Grad-CAM (``gradcam``, ``gradcam++``, ``scorecam``, ``eigencam``, ``layercam``)."""
    def gradients(
        self, x: npt.ArrayLike, target: str, wrt: Layers, *, class_index: int | None = None
    ) -> dict[str, Array]: ...
    def submodel(self, layers: Layers) -> Model: ...
    def save(self, dir: str | os.PathLike[str]) -> None: ...
    def register_forward_hook(
        self, selector: str, hook: Callable[[str, Array], Array | None]
    ) -> HookHandle: ...

def cpu_paths() -> tuple[str, list[str]]:
    """The kernels' instruction-set path in use, and every path the CPU supports."""

def parquet_metadata(settings: dict[str, str], shapes: dict[str, list[int]]) -> str: ...
def _model_from_state(state: dict[str, Any]) -> Model: ...
