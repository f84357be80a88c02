#!/usr/bin/env bash
# Installs the browser tests' driver: playwright-core, pinned by
# tests/browser/package.json and package-lock.json (integrity hashes), with
# `npm ci` into tests/browser/node_modules (git-ignored). Node.js and npm come
# from Debian when missing. No browser is downloaded: the tests drive Debian's
# /usr/bin/chromium (scripts/install-chromium.sh); never `playwright install`.
set -euo pipefail
cd "$(dirname "$0")/../tests/browser"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
want=$(node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./node_modules/playwright-core/package.json').version } catch (e) { '' }")
if [ "$have" != "$want" ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --ignore-scripts
fi
node -e "require('playwright-core')" >/dev/null
echo "playwright-core $want"
