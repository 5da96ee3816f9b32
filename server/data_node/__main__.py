"""``python -m data_node``: the ``data-node`` command."""

import sys

from data_node.cli import main

sys.exit(main())
