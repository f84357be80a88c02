#!/usr/bin/env bash
# The whole test suite: fetch the pinned real-model assets (checksum-verified,
# cached outside the repo), install Chromium for the HTML report test (Debian
# package), then run every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/install-chromium.sh
cargo test --workspace --release "$@"
