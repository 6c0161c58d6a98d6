"""python -m pacnet."""

from pacnet.cli import main

raise SystemExit(main())
