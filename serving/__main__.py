"""`python -m serving --port=8500 --model_base_path=...`: kfx serve without the kfx CLI."""

import sys

from kfx.serving.cli import main

sys.exit(main())
