"""``python -m prunetune``: the ``prunetune`` command."""

import sys

from prunetune.cli import console

sys.exit(console())
