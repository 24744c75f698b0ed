"""`python -m wavflow.cli` runs the CLI."""

import sys

from wavflow.cli import main

sys.exit(main())
