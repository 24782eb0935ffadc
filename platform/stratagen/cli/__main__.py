"""``python -m stratagen.cli`` (what ``torchrun -m stratagen.cli`` runs): the command line."""
import sys

from stratagen.cli import main

sys.exit(main())
