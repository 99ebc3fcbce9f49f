"""What is masked before anything reaches a log: secret settings and credentials in URLs.

* A setting whose name says it holds a secret (``…key``, ``…keys``, ``…token``, ``…tokens``,
  ``…secret``, ``…password``) is shown as ``***`` whenever it is set
  (:func:`is_secret_name`).
* A URL keeps its scheme, host, port and path; its user information and the value of every
  query parameter become ``***`` (:func:`mask_url`): ``postgresql://u:pw@db/x`` →
  ``postgresql://***@db/x``, ``https://h/hook?token=abc`` → ``https://h/hook?token=***``.
  Webhook URLs with basic auth or a token in the query, ``DATABASE_URL`` passwords and LLM
  endpoints with keys are all shapes that carry credentials.
* :func:`mask_text` does the same to every URL inside free text (an exception's message, a
  traceback), which is how a credential would otherwise slip into a log line.

:func:`callbridge.config.redacted` and the log processor of :mod:`callbridge.logs` use these.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
_SECRET_NAME = re.compile(r"(^|_)(keys?|tokens?|secrets?|passwords?)$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def is_secret_name(name: str) -> bool:
    """Whether a setting or field named ``name`` holds a secret (``api_key``, ``tokens``…)."""
    return _SECRET_NAME.search(name.lower()) is not None


def mask_url(url: str) -> str:
    """``url`` with its user information and query values masked (unchanged if it has none,
    or is not a URL)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return MASK if "@" in url else url  # unparseable: mask it whole if it may hold a user
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = (
            f"{MASK}@"
            + (f"[{host}]" if host and ":" in host else (host or ""))
            + (f":{port}" if port else "")
        )
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{name}={MASK}" for name, _ in pairs) if pairs else MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked as :func:`mask_url` does."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    found = match.group(0)
    url = found.rstrip(".,;:!?")  # sentence punctuation after a URL is not part of it
    return mask_url(url) + found[len(url) :]
