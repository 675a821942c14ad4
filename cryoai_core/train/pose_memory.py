"""The best pose found so far for every particle of the training set ("keep what the search found").

The pose search of a step sees only the images of the current batch; without a memory, what it found is
lost once the encoder stops agreeing with it (at the switch to amortized training the loss rose, and the
encoder learnt its own proposals back). The learner therefore keeps, per particle, the pose that explained
its image best at its last visit. At the next visit that pose is re-scored against the current map and
competes with the encoder's proposal and the global search (see ``train/learner.py``); the winner is
refined, trained on, taught to the encoder and stored again.

Memory: ``11`` floats and a flag per particle (44 MB for a million particles), on the training device, so
that a step reads and writes it without waiting for the host.
"""
import torch


class PoseMemory:
    """Rotations ``(N, 3, 3)`` (RELION ``A``) and origins ``(N, 2)`` (training pixels) of ``N`` particles.

    ``known[i]`` is false until particle ``i`` has been given a pose.
    """

    def __init__(self, num_particles: int, device=None):
        if num_particles < 1:
            raise ValueError(f"a pose memory needs at least one particle, got {num_particles}")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.rotations = torch.eye(3, device=self.device).repeat(num_particles, 1, 1)
        self.origins_px = torch.zeros(num_particles, 2, device=self.device)
        self.known = torch.zeros(num_particles, dtype=torch.bool, device=self.device)

    def __len__(self) -> int:
        return len(self.known)

    def get(self, indices: torch.Tensor) -> tuple:
        """``(rotations (B, 3, 3), origins_px (B, 2), known (B,))`` of the particles ``indices`` ``(B,)``, on
        the memory's device."""
        indices = indices.to(self.device, non_blocking=True).long()
        return self.rotations[indices], self.origins_px[indices], self.known[indices]

    def put(self, indices: torch.Tensor, rotations: torch.Tensor, origins_px: torch.Tensor) -> None:
        """Store the poses of the particles ``indices`` ``(B,)``."""
        indices = indices.to(self.device, non_blocking=True).long()
        self.rotations[indices] = rotations.detach().float().to(self.device)
        self.origins_px[indices] = origins_px.detach().float().to(self.device)
        self.known[indices] = True

    def state_dict(self) -> dict:
        return {"rotations": self.rotations, "origins_px": self.origins_px, "known": self.known}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved memory; ``ValueError`` if it holds another number of particles."""
        if tuple(state["rotations"].shape) != tuple(self.rotations.shape):
            raise ValueError(f"the saved pose memory holds {len(state['known'])} particles, this data set "
                             f"{len(self)}")
        self.rotations = state["rotations"].float().to(self.device).clone()
        self.origins_px = state["origins_px"].float().to(self.device).clone()
        self.known = state["known"].bool().to(self.device).clone()
