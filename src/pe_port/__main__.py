"""`python -m pe_port ...`: the `pe-port` command, for environments without the script on PATH."""

import sys

from pe_port.cli import main

sys.exit(main())
