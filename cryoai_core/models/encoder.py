"""Pose encoder (cryoAI paper, Sec. 3.3): Gaussian low-pass bank -> VGG-style CNN -> rotation and shift heads.

The image is filtered by a bank of Gaussian low-pass filters (exact, in Fourier space) whose outputs are
stacked as channels, normalised per image, and fed to a CNN of 3x3 convolutions with batch norm. Its
width and depth follow the box: one stage (two convolutions, 2x2 pooling) per halving down to 4x4
pixels. Two fully connected heads read the features: a 6D rotation (two 3-vectors made orthonormal
columns by Gram-Schmidt, :func:`cryoai_core.rotations.sixd_to_matrix`) and a 2D shift in Å that is the
RELION origin of the particle.
"""
import math

import torch
from torch import nn

from cryoai_core.cuda import encoder_autocast
from cryoai_core.fourier import radial_frequency_2d
from cryoai_core.rotations import sixd_to_matrix
from cryoai_core.train.config import EncoderConfig


class GaussianBank(nn.Module):
    """Fixed bank of Gaussian low-pass filters: ``(B, L, L) -> (B, F, L, L)``, one channel per sigma."""

    def __init__(self, box: int, sigmas_px):
        super().__init__()
        radius = radial_frequency_2d(box)
        sigmas = torch.tensor([float(s) for s in sigmas_px]).reshape(-1, 1, 1)
        self.register_buffer("transfer", torch.exp(-2.0 * math.pi ** 2 * sigmas ** 2 * radius ** 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A filter commutes with circular shifts, so the centred transform's rolls cancel: the uncentred
        # transfer multiplies the real FFT's half spectrum (the transfer is even in k, the product Hermitian).
        half = torch.fft.ifftshift(self.transfer, dim=(-2, -1))[..., : images.shape[-1] // 2 + 1]
        spectra = torch.fft.rfft2(images).unsqueeze(1)
        return torch.fft.irfft2(spectra * half, s=images.shape[-2:])


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class PoseEncoder(nn.Module):
    """Images ``(B, L, L)`` -> rotations ``(B, 3, 3)`` (RELION A) and origins ``(B, 2)`` in Å.

    Args:
        config: the architecture (:class:`~cryoai_core.train.config.EncoderConfig`).
        box: input image side in pixels (even, at least 16).
        max_shift_angstrom: if positive, origins are bounded to ``±max_shift_angstrom`` by a tanh.
    """

    def __init__(self, config: EncoderConfig, box: int, max_shift_angstrom: float = 0.0):
        super().__init__()
        if box < 16 or box % 2:
            raise ValueError(f"the encoder needs an even box of at least 16 pixels, got {box}")
        self.config = config
        self.max_shift_angstrom = float(max_shift_angstrom)
        self.bank = GaussianBank(box, config.filter_sigmas_px)
        stages, channels, size = [], len(config.filter_sigmas_px), box
        width = config.channels(box)
        while size > 4 and size % 2 == 0:
            stages.append(_stage(channels, width))
            channels, size = width, size // 2
            width = min(width * 2, config.max_channels)
        # Channels-last (NHWC) is the layout oneDNN's CPU convolutions and pooling run fastest in (about 1.4x for
        # a training step of the encoder at 64 px), and cuDNN's with bf16; the arithmetic is the same.
        self.features = nn.Sequential(*stages).to(memory_format=torch.channels_last)
        flat = channels * size * size
        hidden = config.hidden_features
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.BatchNorm1d(hidden),
                                   nn.ReLU(inplace=True))
        self.rotation_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 6))
        self.shift_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        with torch.no_grad():
            self.shift_head[-1].weight.mul_(0.01)
            self.shift_head[-1].bias.zero_()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Filter bank, then zero mean and unit variance per image and channel: ``(B, F, L, L)``."""
        stack = self.bank(images)
        std, mean = torch.std_mean(stack, dim=(-2, -1), keepdim=True)
        scale = 1.0 / std.clamp_min(1e-6)
        # (stack - mean) / std in one pass, written in the channels-last layout the convolutions read.
        out = torch.empty_like(stack, memory_format=torch.channels_last)
        return torch.addcmul(-mean * scale, stack, scale, out=out)

    def forward(self, images: torch.Tensor) -> tuple:
        """Returns ``(rotations (B, 3, 3), origins_angstrom (B, 2), sixd (B, 6))``, fp32.

        On CUDA, and in eval mode on a CPU with native bf16, the network runs in bf16 autocast
        (``cryoai_core/cuda.py``); the filter bank before it and the Gram-Schmidt after it stay in fp32."""
        normalized = self.normalize(images)
        with encoder_autocast(images.device, inference=not self.training):
            latent = self.trunk(self.features(normalized.contiguous(memory_format=torch.channels_last)))
            sixd = self.rotation_head(latent)
            origins = self.shift_head(latent)
        sixd, origins = sixd.float(), origins.float()
        if self.max_shift_angstrom > 0:
            origins = self.max_shift_angstrom * torch.tanh(origins / self.max_shift_angstrom)
        return sixd_to_matrix(sixd), origins, sixd
