"""``python -m hica.cli``: the ``hica`` command."""

from hica.cli import main

main()
