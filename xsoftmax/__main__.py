"""``python -m xsoftmax``: the ``xsoftmax`` command (see :mod:`xsoftmax._cli`)."""

import sys

from ._cli import main

sys.exit(main())
