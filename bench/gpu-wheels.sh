#!/usr/bin/env bash
# Build .whl/ for bench/gpu.sh: the shared device-wheels tool's slimmed Ray and its small
# dependencies, plus what the project itself needs and the GPU machine's image lacks
# (tomli-w; cityscapesscripts, whose label table needs none of its own dependencies).
# Usage, from the repository root:  bench/gpu-wheels.sh [PATH/TO/device-wheels]
set -euo pipefail
TOOL=${1:-../shared/tools/device-wheels}
"$TOOL"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl tomli-w==1.2.0 cityscapesscripts==2.3.0
du -sh .whl
