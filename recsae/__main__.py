"""``python -m recsae``: the ``recsae`` command."""

import sys

from recsae.cli import main

sys.exit(main())
