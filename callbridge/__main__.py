"""``python -m callbridge``: the command line."""

from callbridge.cli import main

raise SystemExit(main())
