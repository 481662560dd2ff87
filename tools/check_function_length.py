"""Fail when a function in the package is longer than MAX_LINES (decorators and docstring included).

Long functions are where op knowledge and special cases pile up; the limit keeps each one
readable. ``KNOWN`` lists functions allowed over the limit (none now): a new offender fails, and so does
a listed one that is no longer over the limit (remove it from the list), so the list only shrinks.

    python tools/check_function_length.py [package folder]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 80

KNOWN: set[str] = set()


def long_functions(root: Path) -> dict[str, int]:
    """``{"path:qualified.name": lines}`` for every function over MAX_LINES under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root.parent).as_posix()
        for name, node in _functions(tree, ""):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > MAX_LINES:
                found[f"{rel}:{name}"] = lines
    return found


def _functions(node: ast.AST, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "onnxprune"
    found = long_functions(root)
    new = {k: v for k, v in found.items() if k not in KNOWN}
    gone = sorted(KNOWN - set(found))
    for key, lines in sorted(new.items()):
        print(f"{key}: {lines} lines (over {MAX_LINES}): split it")
    for key in gone:
        print(f"{key}: no longer over {MAX_LINES} lines: remove it from KNOWN in {Path(__file__).name}")
    return 1 if new or gone else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
