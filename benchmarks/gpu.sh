#!/usr/bin/env bash
# The GPU check (benchmarks/gpu.py says what it runs and writes), from the repository root
# without installing the package:
#   benchmarks/gpu.sh [--out DIR] [--dry-run] [--redo STEP ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
