"""python -m jailserve ..."""
from .cli import main

raise SystemExit(main())
