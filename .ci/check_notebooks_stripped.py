#!/usr/bin/env python3
"""Fail when a notebook is stored with outputs or execution counts (a pre-commit hook).

Usage: ``python .ci/check_notebooks_stripped.py NOTEBOOK ...``; prints each offending notebook
with what it holds and exits 1. Standard library only, so the hook needs nothing installed.
"""

import json
import sys


def problems(path):
    """Return what ``path`` stores that a stripped notebook must not (empty when clean)."""
    try:
        with open(path, encoding="utf-8") as f:
            cells = json.load(f).get("cells", [])
    except (OSError, ValueError) as error:
        return [f"cannot be read as a notebook ({error})"]
    code = [c for c in cells if c.get("cell_type") == "code"]
    found = []
    with_outputs = sum(1 for c in code if c.get("outputs"))
    with_counts = sum(1 for c in code if c.get("execution_count") is not None)
    if with_outputs:
        found.append(f"{with_outputs} cell(s) with outputs")
    if with_counts:
        found.append(f"{with_counts} cell(s) with execution counts")
    return found


def main(paths):
    """Check every path; return the exit status."""
    failed = 0
    for path in paths:
        found = problems(path)
        if found:
            failed += 1
            print(f"{path}: {', '.join(found)}")
    if failed:
        print(
            f"{failed} notebook(s) stored with outputs: clear them "
            "(jupyter nbconvert --clear-output --inplace NOTEBOOK, or Clear All Outputs and save)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
