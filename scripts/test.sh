#!/usr/bin/env bash
# The whole test suite: fetch the pinned real-model assets (checksum-verified,
# cached outside the repo), install Chromium for the HTML report and explorer
# tests (Debian package) and playwright-core (pinned npm lock) for the
# explorer's browser test, run every Rust test in release mode, then the Python package's
# tests (scripts/test-python.sh: pinned venv, the wheel, Ray and Spark on
# loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/install-chromium.sh
scripts/install-playwright.sh
cargo test --workspace --release "$@"
scripts/test-python.sh
