"""``python -m flowctl`` is the ``flowctl`` command."""

import sys

from flowctl.cli import main

sys.exit(main())
