"""``python -m alter_kernels.cli ...`` = ``alter-unlearn ...`` (torchrun / accelerate launch start it so)."""
import sys

from .unlearn import main

sys.exit(main())
