#!/usr/bin/env bash
# One-command set-up (README): system packages, a virtual environment with torch pinned, the project with
# its model and test extras, and the pinned JS client for the tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v redis-server >/dev/null || ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server ffmpeg espeak-ng
fi
# A real browser for the playground's test (tests/test_playground.py drives it with selenium).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi

# A container engine for the image test (tests/test_image.py): Debian's Docker Engine, started by the test on a
# private socket, and debootstrap for its base image (no container registry is needed).
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker.io debootstrap
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch pinned in the same command: an unpinned torch requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -e ".[model,train,test]"

if command -v npm >/dev/null; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
echo "set-up done: .venv ready; run the tests with: .venv/bin/python -m pytest"
