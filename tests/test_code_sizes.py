"""scripts/code_sizes.py: what it counts as a definition's size, and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_benchmark_smoke import ROOT

SOURCE = '''\
"""A module."""

TABLE = {
    "a": 1,
    "b": 2,
    "c": 3,
}


class Big:
    """Two docstring lines,
    not counted."""

    def small(self) -> int:
        return 1

    def with_data(self) -> list[int]:
        """Not counted."""
        numbers = [
            1,
            2,
            3,
            4,
        ]
        return numbers


def short(x: int) -> int:
    y = [x,
         x]
    return y[0]
'''


def sizes(tmp_path: Path) -> str:
    package = tmp_path / "callbridge"
    (package / "call").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "call" / "__init__.py").write_text("")
    (package / "call" / "session.py").write_text(SOURCE)
    (package / "config.py").write_text(SOURCE)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "code_sizes.py"), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_sizes_leave_out_docstrings_and_data_literals(tmp_path: Path) -> None:
    out = sizes(tmp_path)
    assert "top-level modules in callbridge/: 1 (config)" in out
    assert "call path modules: 1 (callbridge.call.session)" in out
    call_path, package = out.split("== whole package")
    # Big spans 16 lines: 2 of docstring, 1 of the method's docstring, 6 of a list literal
    assert "      7 (  16 span)  callbridge.call.session:10  Big\n" in call_path
    assert "      2 (   9 span)  callbridge.call.session:17  Big.with_data\n" in call_path
    assert "      2 (   2 span)  callbridge.call.session:14  Big.small\n" in call_path
    # a two-line literal is code, not data
    assert "      4 (   4 span)  callbridge.call.session:28  short\n" in call_path
    assert "callbridge.config" not in call_path and "callbridge.config:10  Big" in package
    assert "classes (target ≤ 250 lines): 0 over" in call_path


def test_it_runs_on_this_repository() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "code_sizes.py"), "--top", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "== call path" in result.stdout and "== whole package" in result.stdout
    assert "callbridge.call.session" in result.stdout
