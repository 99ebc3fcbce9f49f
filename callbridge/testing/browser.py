"""How this project launches a real browser: Debian's Chromium, driven by Playwright.

Playwright's own browser download is not used; ``playwright.chromium.launch(
executable_path=CHROMIUM, args=CHROMIUM_FLAGS)`` runs the system build headless, without
the sandbox (containers), GPU, QUIC, first-run screens or any background network traffic.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
