"""``python -m broker`` runs the CLI."""

from broker.cli import main

main()
