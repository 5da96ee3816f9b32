"""A module whose import ends the process at once (exit code 3): a worker that cannot start."""

import os

os._exit(3)
