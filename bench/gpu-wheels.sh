#!/usr/bin/env bash
# Build .whl/ for bench/gpu.sh: the shared device-wheels tool's slimmed Ray and its small
# dependencies, plus what the project itself needs and the GPU machine's image lacks
# (tomli-w; cityscapesscripts, whose label table needs none of its own dependencies).
# About 48 MB in all (what travels to that machine is limited to 64 MiB). .whl/ is git-ignored.
# Usage, from the repository root (a clone or a worktree):  bench/gpu-wheels.sh [PATH/TO/device-wheels]
set -euo pipefail
TOOL=$(realpath "${1:-../shared/tools/device-wheels}")
# The tool writes .git/info/exclude, which is a file's path only in a plain clone: run it in a
# scratch folder that has one, then move its .whl/ here.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/.git/info"
(cd "$scratch" && "$TOOL" > /dev/null)
rm -rf .whl && mv "$scratch/.whl" .whl
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl tomli-w==1.2.0 cityscapesscripts==2.3.0
du -sh .whl
