"""`python -m cli` runs the sdedit command line."""

import sys

from cli.main import main

sys.exit(main())
