"""python -m analysis.study build|serve|export ... (same as `db3d study ...`)."""

import sys

from .cli import main

sys.exit(main())
