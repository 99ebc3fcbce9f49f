"""The server-side dependencies' floors stay past their published advisories.

The bridge parses whatever a network client sends with aiohttp (HTTP and the media
websocket) and orjson (every media message), so ``pyproject.toml`` must not admit a release
of either with a known advisory, and the environment the tests run in must not hold one.
README "Security" says how to audit the whole environment (``pip-audit``); this test keeps
the floors from sliding back.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# (package, the last release an advisory affects, the advisory)
ADVISORIES = [
    ("aiohttp", "3.12.13", "GHSA-9548-qrrj-x5pj: request smuggling, trailer sections"),
    ("aiohttp", "3.14.1", "GHSA-mfx4-hv73-q22v: request smuggling via websocket upgrade"),
    ("aiohttp", "3.14.1", "GHSA-mq44-7p77-q5h7: websocket client, uncompressed frames"),
    ("aiohttp", "3.14.2", "GHSA-cq5v-8q36-5273: out-of-bounds read, C response parser"),
    ("orjson", "3.9.14", "CVE-2024-27454: loads recursion without a limit"),
    ("orjson", "3.11.5", "CVE-2025-67221: dumps recursion without a limit"),
]


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    parsed = (Requirement(line) for line in project["dependencies"])
    return {requirement.name: requirement for requirement in parsed}


@pytest.mark.parametrize(("package", "affected", "advisory"), ADVISORIES)
def test_no_release_with_an_advisory_is_admitted(
    package: str, affected: str, advisory: str
) -> None:
    requirement = requirements()[package]
    assert not requirement.specifier.contains(affected, prereleases=True), (
        f"pyproject.toml admits {package} {affected} ({advisory}): {requirement}"
    )


@pytest.mark.parametrize(("package", "affected", "advisory"), ADVISORIES)
def test_the_installed_release_is_past_every_advisory(
    package: str, affected: str, advisory: str
) -> None:
    assert Version(version(package)) > Version(affected), advisory


def test_aiohttp_arms_the_request_head_deadline_on_connect() -> None:
    """3.14.4 is the first aiohttp that starts its keep-alive timer when a connection
    opens, which is the bridge's request-head deadline (callbridge.http_limits)."""
    assert not requirements()["aiohttp"].specifier.contains("3.14.3")
