"""``python -m optishear ...`` is the ``optishear`` command."""

import sys

from .cli import main

sys.exit(main())
