import sys

from echocam_cli import main

sys.exit(main())
