"""Test-session settings: one intra-op thread per worker.

pytest-xdist runs two workers on two cores; torch's default threading would
oversubscribe them (measured 2.5-3.7x slower), so each worker uses one thread.
"""

import torch

torch.set_num_threads(1)
