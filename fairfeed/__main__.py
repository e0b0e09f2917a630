import sys

from fairfeed.cli import main

sys.exit(main())
