"""Suite-wide settings: one torch thread (deterministic timings, no oversubscription on 2 cores) and a
non-interactive matplotlib backend."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
