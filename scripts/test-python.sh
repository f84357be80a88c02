#!/usr/bin/env bash
# The Python package's tests: a pinned venv (scripts/requirements-python-test.txt,
# pip --require-hashes), the wheel built from crates/layerlens-python with
# maturin and installed into it, then pytest, inside a loopback-only network
# namespace so that Ray and Spark bind nothing but 127.0.0.1.
#   scripts/test-python.sh              # all Python tests
#   scripts/test-python.sh -k ray       # pytest arguments pass through
# The venv lives in ${LAYERLENS_PY_ENV:-$HOME/.cache/layerlens/pyenv} and is
# reused while the requirements file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${LAYERLENS_PY_ENV:-$HOME/.cache/layerlens/pyenv}
PYTHON=${PYTHON:-python3}
REQ=scripts/requirements-python-test.txt
if ! "$PYTHON" -c 'import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux"))'; then
    echo "error: $PYTHON is not CPython 3.11 on Linux x86_64, which $REQ pins (set PYTHON=python3.11)" >&2
    exit 1
fi
stamp="$ENV/.layerlens-requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$ENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$ENV"
    "$PYTHON" -m venv "$ENV"
    "$ENV/bin/python" -m pip install -q --require-hashes -r /dev/stdin <<'PIN'
pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13
PIN
    # pyspark is an sdist: it builds (setuptools, unpinned build requirement) into a wheel.
    "$ENV/bin/python" -m pip install -q --require-hashes -r "$REQ"
    echo "$want" > "$stamp"
fi
# The wheel: release build, abi3 (CPython >= 3.10); the workspace's target dir
# is shared with cargo, so only the bindings compile anew.
rm -rf target/wheels
"$ENV/bin/maturin" build --release --quiet -m crates/layerlens-python/Cargo.toml --out target/wheels
"$ENV/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/layerlens-*.whl
# Loopback only: a fresh network namespace with nothing but lo (needs root,
# which CI and the sessions have). Ray's usage statistics stay off.
export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1 PYSPARK_PYTHON="$ENV/bin/python"
export LAYERLENS_BIN=${LAYERLENS_BIN:-$PWD/target/release/layerlens}
cargo build --release -q -p layerlens-cli
set +e
unshare -n sh -c 'ip link set lo up && exec "$0" -m pytest -q crates/layerlens-python/tests "$@"' "$ENV/bin/python" "$@"
rc=$?
set -e
# pytest's 5 means no test was collected: a broken suite, not a pass.
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no test" >&2
    exit 1
fi
exit "$rc"
