"""`python -m utils.cli ...` is `unlearn ...` (what `accelerate launch -m utils.cli` runs)."""

import sys

from utils.cli.main import main

sys.exit(main())
