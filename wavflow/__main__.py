"""`python -m wavflow` runs the CLI."""

import sys

from wavflow.cli import main

sys.exit(main())
