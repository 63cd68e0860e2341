"""``python -m gradcheck_kit`` runs the ``gradcheck-kit`` command."""

import sys

from gradcheck_kit.cli import main

sys.exit(main())
