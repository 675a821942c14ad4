"""``python -m cryoai_core.cli``: the same as the ``cryoai`` console script."""
import sys

from cryoai_core.cli import main

sys.exit(main())
