"""``python -m alter_kernels.demo [--quick] [--out DIR]``."""
from .run import main

raise SystemExit(main())
