"""The per-particle score: a Gaussian log-likelihood ratio that separates particles from pure noise."""
import numpy as np
import pytest
import torch

from cryoai_core.evaluate.roc import roc_auc
from cryoai_core.fourier import fft2_centered
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.train.loss import weighted_distances
from cryoai_core.models.forward_model import render
from cryoai_core.train.score import junk_weighted_loss, junk_weights, log_likelihood_ratios, noise_variance
from search_problem import BOX, Problem, make_search


def test_score_is_the_real_space_gaussian_log_likelihood_ratio_for_band_limited_images():
    # Parseval: on images band-limited to the disk, the half-disk formula equals the pixel sums.
    generator = torch.Generator().manual_seed(0)
    disk = HalfDisk(BOX, BOX / 2 - 1)

    def band_limited(count):
        spectra = fft2_centered(torch.randn(count, BOX, BOX, generator=generator, dtype=torch.float64))
        radius = torch.linalg.vector_norm(
            torch.stack(torch.meshgrid(*(torch.arange(BOX) - BOX // 2,) * 2, indexing="ij")).double(), dim=0)
        spectra = spectra * (radius <= BOX / 2 - 2)
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(spectra, dim=(-2, -1))), dim=(-2, -1)).real

    model, noise = band_limited(5), band_limited(5) * 0.7
    images = model + noise
    sigma2 = 0.49 * noise.var().item()
    to_disk = lambda x: disk.gather(fft2_centered(x)) / BOX
    distances = weighted_distances(to_disk(model), to_disk(images), disk.weights)
    energies = weighted_distances(torch.zeros_like(to_disk(images)), to_disk(images), disk.weights)
    scores = log_likelihood_ratios(distances.numpy(), energies.numpy(), disk.weights.sum().item(), sigma2)
    expected = ((images ** 2).sum(dim=(-2, -1)) - (noise ** 2).sum(dim=(-2, -1))) / (2 * sigma2)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)


def test_score_separates_particles_from_pure_noise_images():
    particles = Problem(with_ctf=True, count=32, seed=3, snr=0.1)
    generator = torch.Generator().manual_seed(9)
    junk_images = particles.noise_sigma * torch.randn(particles.images.shape, generator=generator)
    images = torch.cat([particles.images, junk_images])
    targets = particles.disk.gather(fft2_centered(images)) / BOX
    ctf = torch.cat([particles.ctf, particles.ctf])
    found = make_search().search(particles.grid, targets, ctf, particles.disk, generator)
    energies = weighted_distances(torch.zeros_like(targets), targets, particles.disk.weights)
    scores = log_likelihood_ratios(found.distances.numpy(), energies.numpy(), particles.disk.weights.sum().item())
    labels = np.arange(len(images)) < len(particles.images)
    assert roc_auc(scores, labels) >= 0.95
    assert np.median(scores[labels]) > 10.0 > np.median(scores[~labels])


def test_junk_weights_drop_pure_noise_images_and_keep_particles():
    particles = Problem(with_ctf=True, count=24, seed=3, snr=0.1)
    generator = torch.Generator().manual_seed(9)
    junk_images = particles.noise_sigma * torch.randn(8, BOX, BOX, generator=generator)
    targets = particles.disk.gather(fft2_centered(torch.cat([particles.images, junk_images]))) / BOX
    ctf = torch.cat([particles.ctf, particles.ctf[:8]])
    rotations = torch.cat([particles.rotations, particles.rotations[:8]]).float()
    origins = torch.cat([particles.origins_px, particles.origins_px[:8]]).float()
    predicted = render(particles.grid, rotations, origins, ctf, particles.disk)
    distances = weighted_distances(predicted, targets, particles.disk.weights)
    energies = weighted_distances(torch.zeros_like(targets), targets, particles.disk.weights)
    weights = junk_weights(distances, energies, 0.5)
    assert weights[:24].min() > 0.5 and weights[:24].median() == 1.0
    assert weights[24:].max() < 0.1
    # A map that explains nothing yet (the noise images alone) weighs every image alike.
    assert torch.all(junk_weights(distances[24:], energies[24:], 0.5) == 1.0)


def test_junk_weighted_loss_over_two_shards_equals_one_batch():
    """Two ranks holding halves of a batch give, averaged as DDP averages them, the loss and gradient of one
    process with the whole batch; each shard weighted by its own median would not."""
    generator = torch.Generator().manual_seed(4)
    energies = torch.rand(16, generator=generator) + 1.0
    distances = energies * torch.cat([0.1 + 0.1 * torch.rand(10, generator=generator),  # particles, rank 0
                                      0.9 + 0.2 * torch.rand(6, generator=generator)])  # rank 1: mostly junk
    distances = distances.requires_grad_(True)
    whole = junk_weighted_loss(distances, energies, 0.5)
    (whole_gradient,) = torch.autograd.grad(whole, distances)
    weights = junk_weights(distances, energies, 0.5)
    torch.testing.assert_close(whole, (weights * distances).sum() / weights.sum())

    shards = [slice(0, 8), slice(8, 16)]
    # What the other rank contributes to each gather, in call order: its gains, then its weights.
    contributions = [[(energies - distances).detach()[shard], weights.detach()[shard]] for shard in shards]
    losses, gradients = [], []
    for rank, shard in enumerate(shards):
        calls = iter(contributions[1 - rank])

        def gather(tensor, rank=rank, calls=calls):
            parts = [tensor.detach(), next(calls)]
            return torch.cat(parts if rank == 0 else parts[::-1])

        loss = junk_weighted_loss(distances[shard], energies[shard], 0.5, gather)
        losses.append(loss)
        gradients.append(torch.autograd.grad(loss, distances)[0])
    torch.testing.assert_close(sum(losses) / 2, whole)
    torch.testing.assert_close(sum(gradients) / 2, whole_gradient)
    own_medians = sum(junk_weighted_loss(distances[shard], energies[shard], 0.5) for shard in shards) / 2
    assert abs(float((own_medians - whole).detach())) > 1e-3


def test_roc_auc_and_noise_estimate_on_known_values():
    assert roc_auc([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == 1.0
    assert roc_auc([0.0, 1.0, 2.0, 3.0], [True, True, False, False]) == 0.0
    assert roc_auc([1.0, 1.0], [True, False]) == 0.5
    assert noise_variance([1.0, 2.0, 10.0]) == 2.0
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc([1.0, 2.0], [True, True])
