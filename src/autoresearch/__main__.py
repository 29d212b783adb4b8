"""``python -m autoresearch``: the command line."""

import sys

from autoresearch.cli import main

sys.exit(main())
