"""``python -m metrobus`` is the ``metrobus`` command."""

from metrobus.cli import cli

cli()
