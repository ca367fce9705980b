"""``python -m mrfengine``: the command line (same as the ``mrfengine`` script)."""

import sys

from .cli import main

sys.exit(main())
