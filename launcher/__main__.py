"""``python -m launcher [flags] train.py [args]``: see launcher.cli for the flags."""

import sys

from launcher.cli import main

sys.exit(main())
