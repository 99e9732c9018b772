import sys

from djray.train import main

sys.exit(main())
