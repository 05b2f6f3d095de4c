import sys

from midigen.cli import main

sys.exit(main())
