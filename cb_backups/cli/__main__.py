"""`python -m cb_backups.cli`: the same as the `cb-backups` command."""

import sys

from cb_backups.cli.app import main

sys.exit(main())
