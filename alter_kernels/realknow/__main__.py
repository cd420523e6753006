"""``python -m alter_kernels.realknow``."""
from .cli import main

raise SystemExit(main())
