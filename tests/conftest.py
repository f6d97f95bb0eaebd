"""Test configuration: make the test helpers importable and keep transformers quiet."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# Tests use tiny models: one thread per pytest worker is much faster than many
# threads fighting over the machine's two cores.
torch.set_num_threads(1)
