"""`python -m hf_bae`: the same as the `hf-bae` command (hf_bae.cli)."""

import sys

from .cli import main

sys.exit(main())
