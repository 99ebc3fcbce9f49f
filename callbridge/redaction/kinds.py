"""The entity kinds the bridge redacts (``CALLBRIDGE_REDACT``) and their markers."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class RedactionKind(enum.StrEnum):
    PCI = "pci"  # payment card numbers (Luhn), and the CVV and expiry that follow one
    SSN = "ssn"  # US social security numbers
    DOB = "dob"  # dates of birth (after "born", "date of birth", "birthday", "DOB")

    @property
    def marker(self) -> str:
        """What replaces the entity in text and words: ``[PCI]``, ``[SSN]``, ``[DOB]``."""
        return f"[{self.value.upper()}]"


def parse_kinds(values: Iterable[str]) -> frozenset[RedactionKind]:
    """The kinds named in ``values`` (case-insensitive); ``ValueError`` names any unknown."""
    kinds: set[RedactionKind] = set()
    unknown: list[str] = []
    for value in values:
        name = value.strip().lower()
        if not name:
            continue
        try:
            kinds.add(RedactionKind(name))
        except ValueError:
            unknown.append(value.strip())
    if unknown:
        known = ", ".join(kind.value for kind in RedactionKind)
        raise ValueError(f"unknown kind {', '.join(map(repr, unknown))} (known: {known})")
    return frozenset(kinds)
