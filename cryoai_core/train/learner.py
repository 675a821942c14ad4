"""One training step of cryoAI: encoder -> poses -> FourierNet slices x CTF x shift phase -> loss.

Two phases share the same networks:

* **bootstrap** (a deviation from the paper, measured in the project notes): for the images of the
  current batch, a global search over a quasi-uniform rotation grid x a small translation grid against
  a cached copy of the current FourierNet gives poses; FourierNet takes a step on them and the encoder
  is taught to predict them (squared Frobenius + shift errors). Cost per step depends on the batch
  only. It ends when the encoder agrees with the search (median angle below a threshold) or after a
  fraction of the budget.
* **amortized** (the paper): the encoder's poses go straight into the decoder and both train end to
  end with the symmetrized loss (eq. 10) or plain L2.

Coarse-to-fine frequency marching limits the loss to a Fourier radius that grows with training.
"""
import dataclasses
import logging
import math

import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.fourier import fft2_centered, rotate_180_in_plane
from cryoai_core.models.encoder import EncoderConfig, PoseEncoder
from cryoai_core.models.forward_model import HalfDisk, render
from cryoai_core.models.fouriernet import FourierNet
from cryoai_core.pose_search import GridVolume, PoseSearch
from cryoai_core.rotations import compose_in_plane_180, geodesic_angle
from cryoai_core.train.config import TrainConfig
from cryoai_core.train.loss import symmetrized_loss, weighted_distances

logger = logging.getLogger(__name__)

GRID_REFRESH_STEPS = 10
"""Steps between refreshes of the cached FourierNet grid used by the bootstrap search."""
AGREEMENT_MOMENTUM = 0.9
SHIFT_LOSS_WEIGHT = 0.05
"""Weight of the squared shift error (pixels²) against the squared Frobenius error in the bootstrap."""


@dataclasses.dataclass
class StepResult:
    loss: float
    phase: str
    radius_px: float
    agreement_degrees: float = float("nan")


def soft_circular_mask(box: int, radius_px: float, width_px: float = 2.0, device=None) -> torch.Tensor:
    """``(box, box)`` mask, 1 inside ``radius_px`` of the centre ``(box//2, box//2)``, cosine edge."""
    coords = torch.arange(box, dtype=torch.float32, device=device) - box // 2
    radius = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)
    edge = ((radius - radius_px) / width_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * edge))


class CryoAILearner(torch.nn.Module):
    """Encoder + FourierNet + optimizers + phase state for one training grid.

    Images handed to :meth:`step` are ``(B, L, L)`` real tensors already normalised (zero mean, unit
    variance over the data set, contrast inverted if asked), with CTF parameters ``(B, 8)``.
    """

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.encoder = PoseEncoder(EncoderConfig(
            box=config.box, base_channels=config.encoder_channels,
            max_shift_angstrom=config.box * config.pixel_size_angstrom / 4))
        self.decoder = FourierNet(hidden_features=config.fouriernet_width)
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=config.lr_encoder, amsgrad=True)
        self.decoder_optimizer = torch.optim.Adam(self.decoder.parameters(), lr=config.lr_decoder, amsgrad=True)
        radius = config.mask_radius_angstrom / config.pixel_size_angstrom if config.mask_radius_angstrom \
            else 0.9 * config.box / 2
        self.register_buffer("mask", soft_circular_mask(config.box, radius))
        self.phase = "bootstrap" if config.bootstrap else "amortized"
        self.agreement_degrees = float("nan")
        self.steps = 0
        self._disks = {}
        self._grid = None
        self._grid_radius = 0.0
        self._search = None

    def disk(self, radius_px: float) -> HalfDisk:
        key = int(math.ceil(radius_px))
        if key not in self._disks:
            self._disks[key] = HalfDisk(self.config.box, key, device=self.mask.device)
        return self._disks[key]

    def radius_at(self, progress: float) -> float:
        """Loss radius (training pixels) at ``progress`` ∈ [0, 1] of the budget."""
        start, end = self.config.start_radius_px, self.config.nyquist_radius_px
        return start + (end - start) * min(1.0, progress / self.config.marching_fraction)

    def spectra(self, images: torch.Tensor, disk: HalfDisk) -> torch.Tensor:
        """Masked images ``(B, L, L)`` -> their transforms on ``disk``, ``(B, N)``, scaled by ``1/L``."""
        return disk.gather(fft2_centered(images * self.mask)) / self.config.box

    def ctf_values(self, ctf_params: torch.Tensor, disk: HalfDisk) -> torch.Tensor:
        freqs = disk.freqs_px / self.config.pixel_size_angstrom
        return compute_ctf(freqs, CTFParams.from_array(ctf_params)).float()

    def step(self, images: torch.Tensor, ctf_params: torch.Tensor | None, progress: float,
             generator: torch.Generator | None = None) -> StepResult:
        """One optimisation step on a batch; ``progress`` ∈ [0, 1] drives marching and the phase switch."""
        self.train()
        radius = self.radius_at(progress)
        disk = self.disk(radius)
        ctf = None if ctf_params is None else self.ctf_values(ctf_params, disk)
        if self.phase == "bootstrap" and progress >= self.config.bootstrap_max_fraction:
            self._end_bootstrap(f"bootstrap budget spent ({self.config.bootstrap_max_fraction:.0%})")
        if self.phase == "bootstrap":
            loss = self._bootstrap_step(images, ctf, disk, generator)
        else:
            loss = self._amortized_step(images, ctf, disk)
        self.steps += 1
        return StepResult(loss, self.phase, radius, self.agreement_degrees)

    @property
    def at_safe_point(self) -> bool:
        """True when a checkpoint taken now resumes exactly (the search grid is rebuilt at the next step)."""
        return self.phase != "bootstrap" or self.steps % GRID_REFRESH_STEPS == 0

    def _end_bootstrap(self, reason: str) -> None:
        logger.info("step %d: switching to amortized training (%s)", self.steps, reason)
        self.phase = "amortized"
        self._grid = None

    def _optimizer_step(self, optimizer, parameters, loss) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip)
        optimizer.step()

    def _bootstrap_step(self, images, ctf, disk, generator) -> float:
        if self._search is None:
            self._search = PoseSearch(num_rotations=self.config.search_rotations)
        if self._grid is None or self.steps % GRID_REFRESH_STEPS == 0 \
                or self._grid_radius < disk.radius_px.max().item():
            self.decoder.eval()
            self._grid = GridVolume.from_network(self.decoder, self.config.box, disk.radius_px.max().item())
            self._grid_radius = disk.radius_px.max().item()
            self.decoder.train()
        targets = self.spectra(images, disk)
        found = self._search.search(self._grid, targets, ctf, disk, generator)
        rotations, origins_px = found.rotations.to(images.device), found.origins_px.to(images.device)

        predicted = render(self.decoder, rotations, origins_px, ctf, disk)
        decoder_loss = weighted_distances(predicted, targets, disk.weights).mean()
        self._optimizer_step(self.decoder_optimizer, self.decoder.parameters(), decoder_loss)

        encoded, origins_angstrom, _ = self.encoder(images)
        rotation_error = ((encoded - rotations) ** 2).sum(dim=(-2, -1))
        shift_error = ((origins_angstrom / self.config.pixel_size_angstrom - origins_px) ** 2).sum(dim=-1)
        encoder_loss = (rotation_error + SHIFT_LOSS_WEIGHT * shift_error).mean()
        self._optimizer_step(self.encoder_optimizer, self.encoder.parameters(), encoder_loss)

        median = torch.rad2deg(geodesic_angle(encoded.detach(), rotations)).median().item()
        self.agreement_degrees = median if math.isnan(self.agreement_degrees) else \
            AGREEMENT_MOMENTUM * self.agreement_degrees + (1 - AGREEMENT_MOMENTUM) * median
        if self.agreement_degrees < self.config.bootstrap_agreement_degrees and disk.radius_px.max() >= 8:
            self._end_bootstrap(f"encoder agrees with the search within {self.agreement_degrees:.1f}°")
        return decoder_loss.item()

    def _amortized_step(self, images, ctf, disk) -> float:
        batch = images.shape[0]
        if self.config.symmetric_loss:
            images = torch.cat([images, rotate_180_in_plane(images)])
            ctf = None if ctf is None else torch.cat([ctf, ctf])
        rotations, origins_angstrom, _ = self.encoder(images)
        targets = self.spectra(images, disk)
        predicted = render(self.decoder, rotations, origins_angstrom / self.config.pixel_size_angstrom, ctf, disk)
        distances = weighted_distances(predicted, targets, disk.weights)
        if self.config.symmetric_loss:
            loss, _ = symmetrized_loss(distances[:batch], distances[batch:])
        else:
            loss = distances.mean()
        self.encoder_optimizer.zero_grad(set_to_none=True)
        self.decoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for network, optimizer in ((self.decoder, self.decoder_optimizer), (self.encoder, self.encoder_optimizer)):
            torch.nn.utils.clip_grad_norm_(network.parameters(), self.config.grad_clip)
            optimizer.step()
        return loss.item()

    @torch.no_grad()
    def predict_poses(self, images: torch.Tensor, ctf_params: torch.Tensor | None) -> tuple:
        """Amortized poses of ``(B, L, L)`` normalised images: ``(rotations (B,3,3), origins_angstrom (B,2))``.

        With the symmetrized loss, both the image and its 180° rotation are encoded and the pose of
        the path that the decoder explains better is kept (converted back to the image itself).
        """
        self.eval()
        rotations, origins = self.encoder(images)[:2]
        if not self.config.symmetric_loss:
            return rotations, origins
        flipped_rotations, flipped_origins = self.encoder(rotate_180_in_plane(images))[:2]
        disk = self.disk(self.config.nyquist_radius_px)
        ctf = None if ctf_params is None else self.ctf_values(ctf_params, disk)
        targets = self.spectra(images, disk)
        px = self.config.pixel_size_angstrom
        candidates = (rotations, compose_in_plane_180(flipped_rotations))
        shifts = (origins, -flipped_origins)
        distances = [weighted_distances(render(self.decoder, rot, shift / px, ctf, disk), targets, disk.weights)
                     for rot, shift in zip(candidates, shifts)]
        use_flipped = distances[1] < distances[0]
        rotations = torch.where(use_flipped[:, None, None], candidates[1], candidates[0])
        origins = torch.where(use_flipped[:, None], shifts[1], shifts[0])
        return rotations, origins
