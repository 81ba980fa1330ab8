"""`python -m fitloop …`: the same CLI as the `fitloop` script (`fitloop.cli.main`)."""
import sys

from fitloop.cli import main

sys.exit(main())
