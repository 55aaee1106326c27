import sys

from hubbub.server.cli import main

sys.exit(main())
