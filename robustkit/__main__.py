"""``python -m robustkit`` runs the command line."""

from robustkit.cli import main

main()
