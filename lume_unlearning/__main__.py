"""`python -m lume_unlearning ...` is `unlearn ...` (what the sweep engine starts for a run in a child process)."""

import sys

from lume_unlearning.cli import main

sys.exit(main())
