"""`python -m studio ...`: the command line (studio/cli.py)."""
import sys

from studio.cli import main

sys.exit(main())
