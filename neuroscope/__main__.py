"""`python -m neuroscope` = the `neuroscope` command."""
from .cli import main

raise SystemExit(main())
