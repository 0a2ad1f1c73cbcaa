"""``python -m proxy`` is the ``sluice`` command."""

from .cli import main

raise SystemExit(main())
