"""The symmetrized loss (paper eq. 10) and the Hermitian-weighted Fourier distance."""
import torch

from cryoai_core.fourier import fft2_centered, ifft2_centered, radial_frequency_2d
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.train.loss import symmetrized_loss, weighted_distances


def test_symmetrized_loss_takes_the_smaller_path_and_only_its_gradient():
    direct = torch.tensor([1.0, 5.0, 2.0], requires_grad=True)
    flipped = torch.tensor([3.0, 0.5, 2.5], requires_grad=True)
    loss = symmetrized_loss(direct, flipped)
    assert torch.isclose(loss, torch.tensor((1.0 + 0.5 + 2.0) / 3))
    loss.backward()
    assert torch.allclose(direct.grad, torch.tensor([1 / 3, 0.0, 1 / 3]))
    assert torch.allclose(flipped.grad, torch.tensor([0.0, 1 / 3, 0.0]))


def test_weighted_distance_over_the_half_disk_equals_the_full_spectrum_distance():
    """Parseval: for real images band-limited to the disk, the Hermitian-weighted half-disk sum is the full sum."""
    generator = torch.Generator().manual_seed(0)
    box, radius = 16, 6
    inside = radial_frequency_2d(box) * box <= radius
    images = ifft2_centered(fft2_centered(torch.randn(2, box, box, generator=generator)) * inside).real
    disk = HalfDisk(box, radius_px=radius)
    first, second = (disk.gather(fft2_centered(image[None])) for image in images)
    half = weighted_distances(first, second, disk.weights)[0] * disk.weights.sum()
    full = (fft2_centered(images[0]) - fft2_centered(images[1])).abs().pow(2).sum()
    real_space = box * box * (images[0] - images[1]).pow(2).sum()
    assert torch.isclose(half, full, rtol=1e-4)
    assert torch.isclose(half, real_space, rtol=1e-4)
