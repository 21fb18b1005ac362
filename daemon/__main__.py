"""`python -m daemon`: the `herald` command (see daemon/cli)."""

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
