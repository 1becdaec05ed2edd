"""``python -m gadgets`` runs the ``qmri`` command."""

import sys

from gadgets.cli import main

sys.exit(main())
