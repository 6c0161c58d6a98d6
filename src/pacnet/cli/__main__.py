"""python -m pacnet.cli."""

from pacnet.cli import main

raise SystemExit(main())
