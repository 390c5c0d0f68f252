"""``python -m broker.cli``: the same command as ``broker``."""

from broker.cli import main

main()
