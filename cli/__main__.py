"""``python -m cli``: the ``tributary`` command without the installed script."""

from cli.main import main

main()
