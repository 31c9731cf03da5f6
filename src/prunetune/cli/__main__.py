import sys

from prunetune.cli import console

sys.exit(console())
