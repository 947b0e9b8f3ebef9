"""`python -m flatlab.cli ...` (e.g. under `torchrun`): the `flatlab` command."""

import sys

from . import main

sys.exit(main())
