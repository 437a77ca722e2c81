"""``python -m fastpgd.trainer ...``: the ``train`` subcommand on its own."""

import sys

from fastpgd.trainer.cli import main

sys.exit(main())
