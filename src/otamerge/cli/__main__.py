import sys

from otamerge.cli import main

sys.exit(main())
