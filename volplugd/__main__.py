"""``python -m volplugd`` runs the daemon's command line."""

import sys

from volplugd.cli import main

sys.exit(main())
