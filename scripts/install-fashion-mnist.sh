#!/usr/bin/env bash
# Installs the full Fashion-MNIST dataset (Debian package dataset-fashion-mnist,
# files under /usr/share/datasets/fashion-mnist) when it is missing.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST already installed in $DIR"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq dataset-fashion-mnist
test -f "$DIR/train-images-idx3-ubyte.gz"
echo "Fashion-MNIST installed in $DIR"
