"""``python -m xcf ...`` (and ``torchrun --nproc_per_node N -m xcf audit ...``): the command line."""

import sys

from xcf.apps.cli import main

sys.exit(main())
