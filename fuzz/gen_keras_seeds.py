"""Seeds and regression files for the `keras` fuzz target.

    ~/.cache/layerlens/refenv/bin/python fuzz/gen_keras_seeds.py corpus       # -> fuzz/corpus/keras/ (git-ignored)
    ~/.cache/layerlens/refenv/bin/python fuzz/gen_keras_seeds.py regressions  # -> fuzz/regressions/keras/ (committed)

The corpus gets tiny valid files (a few hundred bytes of weights) so the
fuzzer mutates structure, not kilobytes of floats: a `.keras` zip and a
legacy `.h5` of a Conv2D + BatchNormalization + Dense model. The regressions
are malformed variants of them that must each be refused with a one-line
error (crates/layerlens/tests/fuzz_regressions.rs): truncations, a zip
without config.json, a zip holding pickled `model.weights.npz`, config JSON
that is not JSON or names an unknown layer, an HDF5 signature with nothing
after it, and weights of the wrong shape. Needs keras 3 and h5py (the
reference venv of scripts/fetch-models.sh).
"""
import io
import json
import os
import sys
import tempfile
import zipfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2), name="image")
    y = keras.layers.Conv2D(3, 3, padding="same", name="conv")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    y = keras.layers.Dense(2, name="head")(y)
    return keras.Model(x, y, name="tiny")


def saved(model, suffix):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m" + suffix)
        model.save(p)
        return open(p, "rb").read()


def rezip(data, drop=(), replace=None):
    """The .keras zip with members dropped or replaced (stored, like Keras)."""
    replace = replace or {}
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n in src.namelist():
            if n in drop:
                continue
            z.writestr(n, replace.pop(n, src.read(n)))
        for n, b in replace.items():
            z.writestr(n, b)
    return out.getvalue()


def main(kind):
    m = tiny_model()
    k, h5 = saved(m, ".keras"), saved(m, ".h5")
    if kind == "corpus":
        out = os.path.join(HERE, "corpus", "keras")
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "tiny.keras"), "wb").write(k)
        open(os.path.join(out, "tiny.h5"), "wb").write(h5)
        return
    cfg = json.loads(zipfile.ZipFile(io.BytesIO(k)).read("config.json"))
    unknown = json.loads(json.dumps(cfg))
    unknown["config"]["layers"][1]["class_name"] = "NoSuchLayer"
    # Conv kernel of 3 filters declared as 5: the stored weights disagree.
    wrong = json.loads(json.dumps(cfg))
    wrong["config"]["layers"][1]["config"]["filters"] = 5
    files = {
        "keras_truncated_half.keras": k[: len(k) // 2],
        "keras_truncated_header.keras": k[:30],
        "keras_no_config.keras": rezip(k, drop=("config.json",)),
        "keras_npz_weights.keras": rezip(k, drop=("model.weights.h5",), replace={"model.weights.npz": b"PK\x05\x06" + bytes(18)}),
        "keras_config_not_json.keras": rezip(k, replace={"config.json": b"{\"class_name\": "}),
        "keras_unknown_layer.keras": rezip(k, replace={"config.json": json.dumps(unknown).encode()}),
        "keras_wrong_filters.keras": rezip(k, replace={"config.json": json.dumps(wrong).encode()}),
        "keras_weights_not_hdf5.keras": rezip(k, replace={"model.weights.h5": b"not hdf5"}),
        "h5_signature_only.h5": h5[:8],
        "h5_truncated_half.h5": h5[: len(h5) // 2],
        "h5_truncated_tail.h5": h5[:-64],
    }
    out = os.path.join(HERE, "regressions", "keras")
    os.makedirs(out, exist_ok=True)
    for name, data in files.items():
        open(os.path.join(out, name), "wb").write(data)
    print(f"{len(files)} files in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "corpus")
