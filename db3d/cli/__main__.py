"""`python -m db3d.cli ...`: the `db3d` command."""

import sys

from db3d.cli.main import main

sys.exit(main())
