import sys

from pocketnas.cli import main

sys.exit(main())
