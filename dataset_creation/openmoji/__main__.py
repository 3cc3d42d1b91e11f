"""`python -m dataset_creation.openmoji ...`: build the OpenMoji dataset (options: `cli.py`, `--help`)."""

import sys

from dataset_creation.openmoji.cli import main

if __name__ == "__main__":
    sys.exit(main())
