"""Redaction of card numbers, SSNs and dates of birth (``CALLBRIDGE_REDACT``).

* :mod:`~callbridge.redaction.kinds`: the kinds (``pci``, ``ssn``, ``dob``) and markers.
* :mod:`~callbridge.redaction.tokens`: words and numbers, written or spoken.
* :mod:`~callbridge.redaction.detect`: the rules that find entities (few false positives).
* :mod:`~callbridge.redaction.redactor`: applies them to texts and word lists.
* :mod:`~callbridge.redaction.holdback`: redaction across one speaker's segments, with a
  bounded hold for a number that may go on in the next segment.

All of it is pure: no I/O, no clock of its own, and the original text is never logged.
"""

from callbridge.redaction.holdback import SegmentRedactionStage
from callbridge.redaction.kinds import RedactionKind, parse_kinds
from callbridge.redaction.redactor import Redacted, Redactor

__all__ = ["Redacted", "RedactionKind", "Redactor", "SegmentRedactionStage", "parse_kinds"]
