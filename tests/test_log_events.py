"""Log events: every event name in the code is dotted ``area.event``, and the README lists
exactly the events the code logs (a renamed or new event shows here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
DOTTED = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def _is_log_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr in LEVELS
    if isinstance(func, ast.IfExp):  # (log.debug if quiet else log.warning)("event", …)
        return _is_log_call(func.body) and _is_log_call(func.orelse)
    return False


def logged_events() -> dict[str, set[str]]:
    """Event name → the levels it is logged at, from every log call in the package."""
    events: dict[str, set[str]] = {}
    for path in sorted((ROOT / "callbridge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and _is_log_call(node.func) and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                func = node.func
                levels = (
                    {func.attr}
                    if isinstance(func, ast.Attribute)
                    else {f.attr for f in (func.body, func.orelse) if isinstance(f, ast.Attribute)}
                )
                events.setdefault(first.value, set()).update(levels)
    return events


def readme_events() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)`", section))


def test_the_scan_finds_the_log_calls() -> None:
    events = logged_events()
    assert len(events) > 100  # the scan sees the package's log calls at all
    assert events["call.finished"] == {"info"}
    assert events["scribe.message_skipped"] == {"debug", "warning"}  # the IfExp form


def test_every_event_is_named_area_dot_event() -> None:
    undotted = sorted(name for name in logged_events() if not DOTTED.fullmatch(name))
    assert undotted == []


def test_the_readme_lists_every_event_and_no_other() -> None:
    code, readme = set(logged_events()), readme_events()
    assert sorted(code - readme) == [], "logged but not in the README's Logs section"
    assert sorted(readme - code - {"area.event"}) == [], "in the README but never logged"
