"""Print the largest classes and functions of the call path and of the whole package, and
the number of top-level modules.

A definition's size is its lines from ``def``/``class`` to its last line, without its
docstring and without lines inside data literals of five lines or more (a dict of defaults,
a schema, a table): those read as data, not as steps. The raw span is printed beside it.

Usage: ``python scripts/code_sizes.py [--top N] [--root DIR]``
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The call's data path: the Twilio media route, the per-call pipeline (session, turns,
# transcriber, commit windows, pacer, event sink and writer) and the Scribe client: whole
# packages, and the top-level modules they were before they moved into ``call/`` and
# ``twilio/``, so the figure means the same before and after the move.
CALL_PATH_PACKAGES = ("call", "twilio", "scribe")
CALL_PATH_MODULES = (
    "bridge",
    "session",
    "turns",
    "transcriber",
    "commit_windows",
    "send_pacer",
    "sink",
    "event_writer",
    "event_journal",
    "stream_claims",
    "live_calls",
    "lost_calls",
)
DATA_LITERAL_MIN_LINES = 5
CLASS_TARGET, FUNCTION_TARGET = 250, 60

_LITERALS = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant, ast.JoinedStr)


@dataclass(frozen=True)
class Definition:
    kind: str  # "class" or "function"
    module: str
    qualname: str
    line: int
    span: int  # lines from the header to the last line
    size: int  # span without the docstring and large data literals


def _docstring_lines(node: ast.AST) -> set[int]:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return set()


def _data_lines(node: ast.AST) -> set[int]:
    """Lines inside large literals (outermost only) within ``node``."""
    lines: set[int] = set()
    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, _LITERALS):
            end = child.end_lineno or child.lineno
            if end - child.lineno + 1 >= DATA_LITERAL_MIN_LINES:
                lines.update(range(child.lineno, end + 1))
                continue
        stack.extend(ast.iter_child_nodes(child))
    return lines


def _measure(node: ast.stmt, nested: Sequence[ast.AST]) -> tuple[int, int]:
    start = node.lineno
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])
    if decorators:
        start = min(start, *(d.lineno for d in decorators))
    end = node.end_lineno or start
    span = end - start + 1
    excluded = _docstring_lines(node) | _data_lines(node)
    # A nested function's docstring is not the outer one's code either.
    for inner in nested:
        excluded |= _docstring_lines(inner)
    return span, span - len(excluded & set(range(start, end + 1)))


def definitions(path: Path, module: str) -> Iterator[Definition]:
    tree = ast.parse(path.read_text(), str(path))

    def walk(node: ast.AST, prefix: str) -> Iterator[Definition]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                nested = [
                    n
                    for n in ast.walk(child)
                    if n is not child
                    and isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                ]
                span, size = _measure(child, nested)
                yield Definition(kind, module, name, child.lineno, span, size)
                yield from walk(child, f"{name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def modules(package: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        yield path, ".".join(relative.parts)


def in_call_path(module: str) -> bool:
    parts = module.split(".")[1:]  # without "callbridge"
    if parts and parts[0] in CALL_PATH_PACKAGES:
        return True
    return len(parts) == 1 and parts[0] in CALL_PATH_MODULES


def top_level_modules(package: Path) -> list[str]:
    return sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))


def report(title: str, defs: Sequence[Definition], top: int) -> None:
    print(f"\n== {title}")
    for kind, target in (("class", CLASS_TARGET), ("function", FUNCTION_TARGET)):
        ranked = sorted((d for d in defs if d.kind == kind), key=lambda d: (-d.size, d.qualname))
        over = [d for d in ranked if d.size > target]
        print(f"{kind}es" if kind == "class" else "functions", end="")
        print(f" (target ≤ {target} lines): {len(over)} over, largest {top}:")
        for d in ranked[:top]:
            mark = "  over" if d.size > target else ""
            print(f"  {d.size:5d} ({d.span:4d} span)  {d.module}:{d.line}  {d.qualname}{mark}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--top", type=int, default=10, help="definitions listed per kind")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository's root")
    args = parser.parse_args(argv)
    package = args.root / "callbridge"
    every: list[Definition] = []
    for path, module in modules(package):
        every.extend(definitions(path, module))
    call_path = [d for d in every if in_call_path(d.module)]
    call_modules = sorted({d.module for d in call_path})
    top = top_level_modules(package)
    print(f"top-level modules in callbridge/: {len(top)} ({', '.join(top)})")
    print(f"call path modules: {len(call_modules)} ({', '.join(call_modules)})")
    report("call path", call_path, args.top)
    report("whole package", every, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
