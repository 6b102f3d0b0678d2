"""``python -m token_broker_runner`` (and the .pyz): the runner's commands."""

import sys

from .cli import main

sys.exit(main())
