"""`python -m fedprofile`."""

import sys

from fedprofile.cli import main

sys.exit(main())
