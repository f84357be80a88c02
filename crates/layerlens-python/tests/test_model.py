"""The Python API against the CLI (same model files, inputs, batch and
threads: bitwise equal), its errors, hooks, gradients, CAMs and pickling."""

from __future__ import annotations

import os
import pickle
import sys
import threading

import numpy as np
import pytest

import layerlens
from conftest import fashion_images, run_cli


@pytest.fixture(scope="module")
def model(model_dir):
    return layerlens.Model.load(str(model_dir), threads=2)


@pytest.fixture(scope="module")
def batch():
    return (fashion_images(16).astype(np.float32) / 255.0)[:, None]


def test_describes_itself(model):
    assert model.node_names == [
        "input", "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dense"
    ]
    assert model.inputs == [("input", (None, 1, 28, 28))]
    assert model.outputs == [("dense", (None, 10))]
    assert "conv2d_1 (Conv2d)" in model.summary()
    assert model.threads == 2
    path, paths = layerlens.cpu_paths()
    assert path in paths


def test_extract_equals_the_cli_bitwise(model, model_dir, batch, tmp_path):
    np.save(tmp_path / "x.npy", batch)
    out = tmp_path / "cli.npz"
    run_cli("extract", model_dir, "--input", tmp_path / "x.npy", "--layers", "conv2d*,dense",
            "--batch", 8, "--out", out)
    cli = np.load(out)
    ours = model.extract(batch, "conv2d*,dense", batch_size=8)
    assert list(ours) == ["conv2d", "conv2d_1", "dense"]
    for name, a in ours.items():
        assert a.dtype == np.float32 and a.shape == cli[name].shape
        assert np.array_equal(a, cli[name]), name


def test_apply_equals_the_cli(model, model_dir, batch, tmp_path):
    np.save(tmp_path / "x.npy", batch)
    out = tmp_path / "cli.npz"
    run_cli("extract", model_dir, "--input", tmp_path / "x.npy", "--layers", "conv2d_1",
            "--apply", "mean", "--batch", 16, "--out", out)
    ours = model.extract(batch, ["conv2d_1"], apply="mean")
    assert ours["conv2d_1"].shape == (16, 64)
    assert np.array_equal(ours["conv2d_1"], np.load(out)["conv2d_1"])


def test_extract_images_equals_the_cli(model, model_dir, image_paths, tmp_path):
    paths = image_paths[:5]
    out = tmp_path / "cli.npz"
    run_cli("extract", model_dir, "--input", *paths, "--layers", "conv2d,dense", "--out", out)
    cli = np.load(out)
    # The CLI runs one image per pass; so does batch_size=1. Paths and bytes agree.
    by_path = model.extract_images([str(p) for p in paths], ["conv2d", "dense"], batch_size=1)
    by_bytes = model.extract_images([p.read_bytes() for p in paths], ["conv2d", "dense"], batch_size=1)
    for name in ["conv2d", "dense"]:
        assert np.array_equal(by_path[name], cli[name]), name
        assert np.array_equal(by_bytes[name], cli[name]), name
    # One pass over all five: the same numbers up to summation order.
    together = model.extract_images(paths, "dense")
    np.testing.assert_allclose(together["dense"], cli["dense"], rtol=0, atol=1e-6)


def test_preprocess_matches_the_pixels(model, image_paths):
    x = model.preprocess([image_paths[0]])
    raw = fashion_images(64)
    index = int(image_paths[0].stem)
    assert x.shape == (1, 1, 28, 28)
    # Scaled by a multiplication with 1/255 (candle's affine), not a division: 1 ulp apart.
    np.testing.assert_allclose(x[0, 0], raw[index].astype(np.float32) / 255.0, rtol=2e-7, atol=0)


def test_read_only_strided_and_float64_inputs(model, batch):
    expected = model.extract(batch, "dense")["dense"]
    ro = batch.copy()
    ro.setflags(write=False)
    assert np.array_equal(model.extract(ro, "dense")["dense"], expected)
    strided = np.repeat(batch, 2, axis=0)[::2]
    assert not strided.flags.c_contiguous
    assert np.array_equal(model.extract(strided, "dense")["dense"], expected)
    assert np.array_equal(model.extract(batch.astype(np.float64), "dense")["dense"], expected)


def test_outputs_are_owned_writable_arrays(model, batch):
    a = model.extract(batch, "dense")["dense"]
    assert a.flags.owndata or a.base is not None
    a[...] = 0  # ours to change


def test_errors_are_clear(model, batch):
    with pytest.raises(layerlens.LayerlensError, match="unknown node 'conv3'; did you mean 'conv2d'"):
        model.extract(batch, "conv3")
    with pytest.raises(layerlens.LayerlensError, match=r"expects.*28.*got"):
        model.extract(np.zeros((1, 3, 32, 32), np.float32), "dense")
    with pytest.raises(layerlens.LayerlensError, match="image\\[0\\]: cannot decode image"):
        model.extract_images([b"not an image"], "dense")
    with pytest.raises(layerlens.LayerlensError, match="unknown apply Lambda 'avg'"):
        model.extract(batch, "dense", apply="avg")
    with pytest.raises(layerlens.LayerlensError, match="unknown zoo model 'resnet19'.*resnet18"):
        layerlens.Model.load("zoo:resnet19")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        layerlens.Model.load("missing.onnx")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        layerlens.Model.load("zoo:seed_cnn", threads=0)


def test_forward_hooks_observe_replace_raise_and_remove(model, batch):
    seen = []
    handle = model.register_forward_hook("conv2d*", lambda name, a: seen.append((name, a.shape)))
    model.extract(batch[:2], "dense")
    assert seen == [("conv2d", (2, 32, 26, 26)), ("conv2d_1", (2, 64, 11, 11))]
    model.extract(batch[:2], "conv2d_1", apply="mean")  # through a Lambda model too
    assert [n for n, _ in seen[2:]] == ["conv2d", "conv2d_1"]
    del seen[2:]
    handle.remove()
    handle.remove()  # idempotent
    model.extract(batch[:2], "dense")
    assert len(seen) == 2

    # Returning an array replaces the activation downstream (zeros in, biases out).
    with model.register_forward_hook("conv2d_1", lambda name, a: np.zeros_like(a)):
        zeroed = model.extract(batch[:2], "dense")["dense"]
    assert np.allclose(zeroed[0], zeroed[1])
    assert not np.array_equal(zeroed, model.extract(batch[:2], "dense")["dense"])

    def broken(name, a):
        raise RuntimeError(f"boom in {name}")

    with model.register_forward_hook("conv2d", broken):
        with pytest.raises(RuntimeError, match="boom in conv2d"):
            model.extract(batch[:1], "dense")
    with model.register_forward_hook("conv2d", lambda name, a: a[:, :1]):
        with pytest.raises(ValueError, match="returned shape"):
            model.extract(batch[:1], "dense")
    model.extract(batch[:1], "dense")  # nothing left behind


def test_gradients_match_finite_differences(model, batch):
    x = batch[:1].astype(np.float64)
    g = model.gradients(x.astype(np.float32), "dense", ["input"], class_index=3)["input"]
    assert g.shape == x.shape
    rng = np.random.default_rng(0)
    for _ in range(5):
        i, j = rng.integers(4, 24, size=2)
        eps = 1e-2
        hi, lo = x.copy(), x.copy()
        hi[0, 0, i, j] += eps
        lo[0, 0, i, j] -= eps
        f = lambda v: float(model.extract(v.astype(np.float32), "dense")["dense"][0, 3])
        numeric = (f(hi) - f(lo)) / (2 * eps)
        assert abs(numeric - g[0, 0, i, j]) <= 2e-3 + 2e-2 * abs(numeric), (i, j, numeric, g[0, 0, i, j])


def test_cam_over_an_image(model, image_paths):
    c = model.cam(str(image_paths[0]), "conv2d_1", method="gradcam++")
    logits = model.extract_images([image_paths[0]], "dense")["dense"][0]
    assert c["class_index"] == int(np.argmax(logits))
    assert c["heatmap"].shape == (28, 28)
    assert 0.0 <= c["heatmap"].min() and c["heatmap"].max() <= 1.0
    chosen = model.cam(image_paths[0].read_bytes(), "conv2d_1", method="gradcam", class_index=2)
    assert chosen["class_index"] == 2
    with pytest.raises(layerlens.LayerlensError, match="unknown CAM method"):
        model.cam(str(image_paths[0]), "conv2d_1", method="gradcam3")


def test_submodel_save_load_and_pickle_round_trip(model, batch, tmp_path):
    sub = model.submodel(["conv2d_1"])
    assert [n for n, _ in sub.outputs] == ["conv2d_1"]
    assert "dense" not in sub.node_names
    expected = model.extract(batch, "conv2d_1")["conv2d_1"]
    assert np.array_equal(sub.extract(batch, "conv2d_1")["conv2d_1"], expected)
    sub.save(tmp_path / "sub")
    back = layerlens.Model.load(str(tmp_path / "sub"))
    assert np.array_equal(back.extract(batch, "conv2d_1")["conv2d_1"], expected)
    again = pickle.loads(pickle.dumps(model))
    assert again.node_names == model.node_names
    assert np.array_equal(again.extract(batch, "dense")["dense"], model.extract(batch, "dense")["dense"])


def test_concurrent_calls_agree_with_serial_ones(model, batch):
    expected = model.extract(batch, "dense")["dense"]
    results = [None] * 4

    def work(i):
        results[i] = model.extract(batch, "dense")["dense"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert np.array_equal(r, expected)


def test_the_gil_is_released_while_computing(model_dir):
    """Thread A runs a pass with a hook at its first layer and another at its
    last; between them, the model computes in Rust. The main thread, woken by
    the first hook, sets a flag; the second hook reads it without waiting. With
    a switch interval of 1000 s no thread can take the GIL from another by
    preemption, so the flag is set in time only if the GIL was free while the
    model computed."""
    m = layerlens.Model.load(str(model_dir), threads=1)
    x = np.random.default_rng(1).random((256, 1, 28, 28), dtype=np.float32)
    first_layer_done = threading.Event()
    main_ran = threading.Event()
    seen = {}
    h1 = m.register_forward_hook("conv2d", lambda name, a: first_layer_done.set())
    h2 = m.register_forward_hook("dense", lambda name, a: seen.update(main_ran=main_ran.is_set()))
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        t = threading.Thread(target=lambda: m.extract(x, "dense"))
        t.start()
        assert first_layer_done.wait(60)
        main_ran.set()
        t.join()
    finally:
        sys.setswitchinterval(old)
        h1.remove()
        h2.remove()
    assert seen == {"main_ran": True}


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAYERLENS_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert layerlens.Model.load("zoo:seed_cnn").threads == 3
    monkeypatch.delenv("LAYERLENS_NUM_THREADS")
    assert layerlens.Model.load("zoo:seed_cnn").threads == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        layerlens.Model.load("zoo:seed_cnn")


def test_a_forked_child_computes(model, batch):
    """The parent's pool has run (its threads exist only in the parent); a
    forked child, as Spark's workers are, must build its own and compute."""
    import os

    expected = model.extract(batch, "dense")["dense"]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            got = model.extract(batch, "dense")["dense"]
            os.write(write_end, b"ok" if np.array_equal(got, expected) else b"differs")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 16)
    os.close(read_end)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and answer == b"ok", answer


def test_zoo_models_without_their_weights_warn():
    with pytest.warns(RuntimeWarning, match="zoo:resnet18 has random weights"):
        layerlens.Model.load("zoo:resnet18")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layerlens.Model.load("zoo:resnet18=random")
        layerlens.Model.load("zoo:seed_cnn")


def test_published_weights_by_name_from_the_cache(tmp_path, monkeypatch):
    """`zoo:NAME=imagenet` reads the hub cache (LAYERLENS_HUB_DIR); offline,
    a file not there is a ConnectionError (an OSError) that says where it goes."""
    import shutil

    cache = os.environ.get("LAYERLENS_CACHE", os.path.expanduser("~/.cache/layerlens"))
    monkeypatch.setenv("LAYERLENS_HUB_DIR", str(tmp_path))
    monkeypatch.setenv("LAYERLENS_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="LAYERLENS_OFFLINE is set"):
        layerlens.Model.load("zoo:efficientnet_lite0=imagenet")
    shutil.copy(os.path.join(cache, "assets", "efficientnet-lite0.pth"),
                tmp_path / "efficientnet-lite0-57934424.pth")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = layerlens.Model.load("zoo:efficientnet_lite0=imagenet")
    ref = layerlens.Model.load("zoo:efficientnet_lite0=" + os.path.join(cache, "assets", "efficientnet-lite0.pth"))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(m.extract(x, "_fc")["_fc"], ref.extract(x, "_fc")["_fc"])


def test_symbolic_onnx_sizes_are_given_like_the_cli():
    from conftest import ROOT

    path = str(ROOT / "crates/layerlens-onnx/tests/fixtures/dynamic_hw.onnx")
    with pytest.raises(ValueError, match=r"height, width unresolved.*--input-shape"):
        layerlens.Model.load(path)
    for kwargs in ({"input_shape": (3, 24, 12)}, {"input_shape": {"x": (3, 24, 12)}},
                   {"dims": {"height": 24, "width": 12}}):
        m = layerlens.Model.load(path, **kwargs)
        assert m.inputs == [("x", (None, 3, 24, 12))], kwargs
        assert m.outputs == [("up", (None, 2, 24, 12))], kwargs
    with pytest.raises(ValueError, match="dim 1 cannot be 4"):
        layerlens.Model.load(path, input_shape=(4, 24, 12))
    with pytest.raises(TypeError, match="input_shape"):
        layerlens.Model.load(path, input_shape="3,24,12")


def test_symbolic_onnx_model_runs_arrays_of_any_size_sharing_hooks():
    """A model opened at one size runs arrays of another at theirs (one import
    per size, weights and hooks shared), matching a model opened at that size."""
    from conftest import ROOT

    path = str(ROOT / "crates/layerlens-onnx/tests/fixtures/dynamic_hw.onnx")
    m = layerlens.Model.load(path, input_shape=(3, 16, 20))
    rng = np.random.default_rng(3)
    seen = []
    with m.register_forward_hook("relu1", lambda name, a: seen.append(a.shape)):
        for h, w in [(16, 20), (24, 12), (8, 8), (24, 12)]:
            x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
            got = m.extract(x, ["up", "pool1"])
            assert got["up"].shape == (2, 2, h, w)
            want = layerlens.Model.load(path, input_shape=(3, h, w)).extract(x, ["up", "pool1"])
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert seen == [(2, 4, 16, 20), (2, 4, 24, 12), (2, 4, 8, 8), (2, 4, 24, 12)]
    # A shape the file fixes is still refused, naming it.
    with pytest.raises(ValueError, match="dim 1 cannot be 4"):
        m.extract(np.zeros((1, 4, 8, 8), np.float32), "up")


def test_tensors_whose_batch_is_not_first_join_batches_along_their_batch_axis():
    """ViT attention's (17, N, 16): extracting in batches gives the same array
    as one pass, with the batch on axis 1 as in the ONNX file."""
    from conftest import ROOT

    path = str(ROOT / "crates/layerlens-onnx/tests/fixtures/subset_vit_torchscript.onnx")
    m = layerlens.Model.load(path, input_shape=(3, 32, 32))
    x = np.random.default_rng(5).normal(size=(5, 3, 32, 32)).astype(np.float32)
    name = "/encoder/layers/encoder_layer_0/self_attention/Transpose_output_0"
    whole = m.extract(x, [name])[name]
    assert whole.shape == (17, 5, 16)
    parts = m.extract(x, [name], batch_size=2)[name]
    np.testing.assert_allclose(parts, whole, rtol=1e-6, atol=1e-6)
    alone = m.extract(x[3:4], [name])[name]
    np.testing.assert_allclose(whole[:, 3:4], alone, rtol=1e-5, atol=1e-6)


def test_keras_lambdas_are_bound_like_the_cli():
    from conftest import ROOT

    path = str(ROOT / "crates/layerlens-keras/tests/fixtures/lambda.keras")
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    unbound = layerlens.Model.load(path)
    assert unbound.extract(x, ["before"])["before"].shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"spatial_mean.*--bind"):
        unbound.extract(x, ["after"])
    bound = layerlens.Model.load(path, bind={"spatial_mean": 'mean({"axes": [2, 3]})'})
    before = bound.extract(x, ["before"])["before"]
    after = bound.extract(x, ["after"])["after"]
    assert after.shape == (2, 2)
    # The bound Lambda is the spatial mean: "after" is a Dense on it.
    dense_in = before.mean(axis=(2, 3))
    assert np.allclose(bound.extract(x, ["spatial_mean"])["spatial_mean"], dense_in, atol=1e-6)
    with pytest.raises(ValueError, match="not a Lambda layer"):
        layerlens.Model.load(path, bind={"before": "flatten"})
    with pytest.raises(ValueError, match="not a Keras model"):
        layerlens.Model.load("zoo:seed_cnn", bind={"x": "flatten"})
