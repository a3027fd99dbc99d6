import sys

from vadice.cli import main

sys.exit(main())
