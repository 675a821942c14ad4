"""Shared test settings: one torch thread (faster and steadier than two on a loaded 2-core machine)."""
import torch

torch.set_num_threads(1)
