"""`python -m edgekit.cli`: the edgekit command."""

from . import main

main()
