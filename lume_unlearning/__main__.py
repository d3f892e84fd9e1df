"""`python -m lume_unlearning ...` is `unlearn ...`."""

import sys

from lume_unlearning.cli import main

sys.exit(main())
