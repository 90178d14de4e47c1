"""``python -m hf_task2vec`` (also ``accelerate launch -m hf_task2vec ...``)."""

import sys

from .cli import main

sys.exit(main())
