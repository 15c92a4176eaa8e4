"""`python -m asklepios` is the `asklepios` command."""

import sys

from asklepios.cli import main

sys.exit(main())
