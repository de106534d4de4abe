"""`python -m circuit_studio`: the same as the `circuit-studio` command."""

import sys

from .cli import main

sys.exit(main())
