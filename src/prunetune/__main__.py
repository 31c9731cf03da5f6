"""``python -m prunetune``: the ``prunetune`` command."""

import sys

from prunetune.cli import main

sys.exit(main())
