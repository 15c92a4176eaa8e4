#!/usr/bin/env bash
# Build the asklepios wheel, for the CLI on a workstation (`asklepios check`,
# `status`, `pause`, ...):
#
#   bash hack/build-wheel.sh [OUT_DIR]            # default: dist/
#   pipx install dist/asklepios-0.1.0-py3-none-any.whl
#   # or: python3 -m pip install --user dist/asklepios-0.1.0-py3-none-any.whl
#
# Needs Python 3.11 or later with pip ($PYTHON, default python3). pip fetches the
# build backend (hatchling) from the package index; the wheel is pure Python, so
# one wheel serves every platform. Prints the wheel's path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
out=${1:-dist}
python=${PYTHON:-python3}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/asklepios/__init__.py)
[[ -n $version ]] || { echo "build-wheel.sh: no __version__ in src/asklepios/__init__.py" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "build-wheel.sh: $python is older than 3.11 (set PYTHON=python3.11)" >&2; exit 1; }

mkdir -p "$out"
rm -f "$out/asklepios-$version-py3-none-any.whl"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" . >&2
wheel="$out/asklepios-$version-py3-none-any.whl"
[[ -f $wheel ]] || { echo "build-wheel.sh: pip wrote no $wheel" >&2; exit 1; }
echo "$wheel"
