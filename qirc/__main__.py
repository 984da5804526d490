"""`python -m qirc` is the `qirc` command."""
import sys

from .cli import main

sys.exit(main())
