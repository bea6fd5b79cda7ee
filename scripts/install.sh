#!/usr/bin/env bash
# Sets up .venv with robustkit (editable), its test extra, and every plugin distribution under plugins/ (editable).
# Idempotent: rerunning only installs what changed. Needs python3 (3.10+) with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv resolves and installs the multi-GB torch stack several times faster than pip.
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set, every start would recompile torch (~20 s).
plugins=()
for dir in plugins/*/; do plugins+=(-e "${dir%/}"); done
.venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python -e ".[test]" "${plugins[@]}"
echo "robustkit installed in .venv ($(.venv/bin/robustkit --version))"
