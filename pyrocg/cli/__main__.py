"""``python -m pyrocg.cli`` (and ``torchrun -m pyrocg.cli``) runs the ``pyrocg`` command."""

import sys

from . import main

sys.exit(main())
