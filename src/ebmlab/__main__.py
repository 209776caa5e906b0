"""``python -m ebmlab``: the same command line as the ``ebmlab`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
