import sys

from djray.cli import main

sys.exit(main())
