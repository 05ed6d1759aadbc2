"""``python -m celeryflow.cli``: the ``celeryflow`` command."""

from . import main

main()
