"""``python -m hwgpt_bench``: the same as the ``hwgpt-bench`` command."""

import sys

from hwgpt_bench.cli import main

sys.exit(main())
