"""``python -m cellfarm``: the same command line as the ``cellfarm`` executable."""

from cellfarm.cli import main

main()
