"""``python -m mlic`` (also what ``torchrun -m mlic`` runs)."""

import sys

from mlic.cli import main

sys.exit(main())
