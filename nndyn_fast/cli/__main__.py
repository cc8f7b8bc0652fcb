"""``python -m nndyn_fast.cli``: the same as the ``nndyn`` command."""

import sys

from nndyn_fast.cli import main

sys.exit(main())
