"""``python -m adabin_np ...`` is ``adabin-np ...`` (see :mod:`adabin_np.cli`)."""

import sys

from .cli import main

sys.exit(main())
