"""The learner: both phases run and learn, and the pose of the winning symmetrized path is converted back."""
import pytest
import roma
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.fourier import fft2_centered, frequency_grid_2d, ifft2_centered, origin_phase
from cryoai_core.models.forward_model import render
from cryoai_core.rotations import compose_in_plane_180, geodesic_angle, random_rotations
from cryoai_core.slicing import VoxelFourierVolume
from cryoai_core.train.config import TrainConfig, build
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.loss import weighted_distances
from search_problem import BOX as SEARCH_BOX, PIXEL as SEARCH_PIXEL, Problem, blob_map as search_blob_map

BOX = 16
PIXEL = 4.0


def blob_map(seed: int) -> torch.Tensor:
    """An asymmetric map of four Gaussian blobs ``(BOX,)*3`` near the centre."""
    return search_blob_map(seed, box=BOX, blobs=4, spread_px=6.0, widths_px2=(3.0, 3.0))


def config(**changes) -> TrainConfig:
    values = dict(box=BOX, pixel_size_angstrom=PIXEL, input_box=BOX, input_pixel_size_angstrom=PIXEL, epochs=1,
                  batch_size=8, search_rotations=128, fouriernet_width=16, encoder_base_channels=4)
    values.update(changes)
    return build(**values)


class TrueMap(torch.nn.Module):
    """A decoder that returns the transform of a known map (coordinates in cycles per pixel)."""

    def __init__(self, volume: VoxelFourierVolume, scale: float):
        super().__init__()
        self.volume, self.scale = volume, scale

    def forward(self, coords):
        return (self.volume.sample(coords.double() / PIXEL) * self.scale).to(torch.complex64)


class FunctionModule(torch.nn.Module):
    """A decoder made of a plain function of the coordinates."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, coords):
        return self.function(coords).to(torch.complex64)


class ScriptedEncoder(torch.nn.Module):
    """Returns the given poses ``(rotations, origins Å)`` of the images (``direct``) and of their 180° rotations
    (``flipped``): for a batch of both stacked (images first), or for one of them per call, in that order."""

    def __init__(self, direct, flipped):
        super().__init__()
        self.answers = [direct, flipped]

    def forward(self, images):
        if len(self.answers) == 2 and len(images) == 2 * len(self.answers[0][0]):
            (rotations, origins), (flipped_rotations, flipped_origins) = self.answers
            self.answers = []
            return torch.cat([rotations, flipped_rotations]), torch.cat([origins, flipped_origins]), None
        rotations, origins = self.answers.pop(0)
        return rotations, origins, None


def scaled_true_map(volume: VoxelFourierVolume) -> TrueMap:
    """The decoder whose slices equal the learner's image transforms: ``project`` scales the map transform by
    ``voxel³ / pixel² = PIXEL`` and :meth:`CryoAILearner.spectra` divides by the box."""
    return TrueMap(volume, PIXEL / BOX)


def particle_images(volume, rotations, origins_angstrom, ctf_params=None) -> torch.Tensor:
    """Projections at ``rotations``, times the CTF, moved to ``-origin`` (RELION), ``(B, BOX, BOX)`` float64."""
    spectra = fft2_centered(volume.project(rotations, BOX, PIXEL))
    if ctf_params is not None:
        spectra = spectra * compute_ctf(frequency_grid_2d(BOX, PIXEL, dtype=torch.float64),
                                        CTFParams.from_array(ctf_params))
    spectra = spectra * origin_phase(frequency_grid_2d(BOX, dtype=torch.float64), origins_angstrom / PIXEL)
    return ifft2_centered(spectra).real


@pytest.mark.parametrize("right_path", ["direct", "flipped"])
def test_predict_poses_converts_the_winning_path_back_to_the_image(right_path):
    volume = VoxelFourierVolume(blob_map(0), PIXEL, oversampling=2)
    generator = torch.Generator().manual_seed(1)
    truth = random_rotations(6, generator).double()
    origins = (torch.rand(6, 2, generator=generator, dtype=torch.float64) - 0.5) * 4 * PIXEL
    assert origins.abs().min() > 0
    images = particle_images(volume, truth, origins).float()
    wrong = (random_rotations(6, torch.Generator().manual_seed(2)).float(), torch.zeros(6, 2))
    learner = CryoAILearner(config(mask_radius_angstrom=BOX * PIXEL))
    learner.decoder = scaled_true_map(volume)
    if right_path == "direct":
        learner.encoder = ScriptedEncoder((truth.float(), origins.float()), wrong)
    else:
        # The rotated image holds the particle at +origin, so its RELION origin is -origin.
        learner.encoder = ScriptedEncoder(wrong, (compose_in_plane_180(truth).float(), -origins.float()))
    rotations, predicted_origins = learner.predict_poses(images, None)
    assert torch.rad2deg(geodesic_angle(rotations.double(), truth)).max() < 0.1
    torch.testing.assert_close(predicted_origins.double(), origins, atol=1e-5, rtol=0)


def test_predict_poses_of_a_batch_are_those_of_its_images_alone():
    """In eval mode the encoder's output for an image does not depend on the rest of its batch, so encoding the
    images and their 180° rotations in one pass gives each image the poses it gets on its own."""
    torch.manual_seed(3)
    learner = CryoAILearner(config())
    learner.train()
    images = torch.randn(12, BOX, BOX)
    for _ in range(2):
        learner.encoder(images)
    together = learner.predict_poses(images, None)
    alone = [learner.predict_poses(images[index:index + 1], None) for index in (0, 5, 11)]
    for index, (rotations, origins) in zip((0, 5, 11), alone):
        torch.testing.assert_close(together[0][index:index + 1], rotations, atol=1e-5, rtol=0)
        torch.testing.assert_close(together[1][index:index + 1], origins, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:`parameters` is an empty generator")
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_loss_of_the_true_map_poses_and_ctf_is_the_noise_variance(sign):
    """With the true map, poses, origins and CTF, only the noise is left: the loss equals its variance."""
    volume = VoxelFourierVolume(blob_map(5), PIXEL, oversampling=2)
    generator = torch.Generator().manual_seed(6)
    count, sigma = 32, 0.3
    truth = random_rotations(count, generator).double()
    origins = (torch.rand(count, 2, generator=generator, dtype=torch.float64) - 0.5) * 4 * PIXEL
    ctf_params = torch.tensor([[8000.0, 7000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0]], dtype=torch.float64)
    ctf_params = ctf_params.repeat(count, 1)
    clean = particle_images(volume, truth, origins, ctf_params)
    noise = sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    losses = []
    for images in (clean, clean + noise):
        learner = CryoAILearner(config(mask_radius_angstrom=BOX * PIXEL, bootstrap=False, symmetric_loss=False,
                                       amortized_poses="encoder"))
        learner.decoder = scaled_true_map(volume)
        learner.encoder = ScriptedEncoder((truth.float().requires_grad_(), sign * origins.float()), None)
        losses.append(learner.step(images.float(), ctf_params.float(), progress=1.0).loss)
    signal = clean.var().item()
    if sign > 0:
        assert losses[0] < 1e-6 * signal
        assert losses[1] == pytest.approx(sigma ** 2, rel=0.06)
    else:  # origins of the wrong sign: far above the floor
        assert min(losses) > sigma ** 2 + signal


def test_bootstrap_then_amortized_steps_reduce_the_loss():
    torch.manual_seed(0)
    volume = VoxelFourierVolume(blob_map(3), PIXEL, oversampling=2)
    generator = torch.Generator().manual_seed(4)
    learner = CryoAILearner(config(batch_size=32, bootstrap_max_fraction=0.5))
    images = volume.project(random_rotations(32, generator).double(), BOX, PIXEL).float()
    images = images / images.std()
    losses = [learner.step(images, None, progress=0.0, generator=generator).loss for _ in range(30)]
    assert learner.phase == "bootstrap"
    assert min(losses[-3:]) < 0.7 * losses[0]
    result = learner.step(images, None, progress=0.6, generator=generator)
    assert result.phase == "amortized" and result.radius_px == pytest.approx(learner.config.nyquist_radius_px)
    for parameter in learner.encoder.parameters():
        assert parameter.grad is not None


def test_configuration_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="even"):
        config(box=17)
    with pytest.raises(ValueError, match="--epochs, --max-minutes"):
        config(epochs=None)
    with pytest.raises(ValueError, match="--lr-encoder"):
        config(lr_encoder=2.0)


def test_the_bootstrap_can_end_early_at_box_16():
    """The early exit waits for the loss radius to reach 8 px, capped at Nyquist (7 px at box 16)."""
    volume = VoxelFourierVolume(blob_map(7), PIXEL, oversampling=2)
    generator = torch.Generator().manual_seed(8)
    images = volume.project(random_rotations(8, generator).double(), BOX, PIXEL).float()
    learner = CryoAILearner(config(bootstrap_agreement_degrees=180.0, bootstrap_max_fraction=1.0))
    result = learner.step(images / images.std(), None, progress=0.99, generator=generator)
    assert result.radius_px == learner.config.nyquist_radius_px == 7.0
    assert learner.phase == "amortized"  # ended by agreement: 0.99 of the budget is below max_fraction


def test_refine_poses_recovers_true_poses_and_shifts_from_a_poor_start():
    problem = Problem(with_ctf=True, count=8, seed=5)
    learner = CryoAILearner(config(box=SEARCH_BOX, input_box=SEARCH_BOX, pixel_size_angstrom=SEARCH_PIXEL,
                                   input_pixel_size_angstrom=SEARCH_PIXEL, mask_radius_angstrom=SEARCH_BOX * SEARCH_PIXEL,
                                   amortized_poses="refined", search_rotations=2048))
    learner.decoder = FunctionModule(problem.map)
    generator = torch.Generator().manual_seed(6)
    start = random_rotations(8, generator)
    rotations, origins = learner.refine_poses(problem.images, torch.as_tensor(problem.ctf_params), start,
                                              torch.zeros(8, 2), generator)
    assert torch.rad2deg(geodesic_angle(rotations.double(), problem.rotations)).median() < 3.0
    assert (origins.double() / SEARCH_PIXEL - problem.origins_px).abs().max() < 0.5
    distances, energies = learner.fit_terms(problem.images, torch.as_tensor(problem.ctf_params), rotations, origins)
    assert (distances < 0.05 * energies).all()


def test_refined_amortized_steps_train_both_networks():
    torch.manual_seed(0)
    volume = VoxelFourierVolume(blob_map(3), PIXEL, oversampling=2)
    generator = torch.Generator().manual_seed(4)
    learner = CryoAILearner(config(batch_size=32, bootstrap=False, amortized_poses="refined", search_global_every=2))
    images = volume.project(random_rotations(32, generator).double(), BOX, PIXEL).float()
    images = images / images.std()
    losses = [learner.step(images, None, progress=0.0, generator=generator).loss for _ in range(30)]
    assert learner.phase == "amortized" and min(losses[-3:]) < 0.7 * losses[0]
    assert all(parameter.grad is not None for parameter in learner.encoder.parameters())
    assert not learner.at_safe_point or learner.steps % 10 == 0


def _turned(rotations: torch.Tensor, degrees: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``rotations`` ``(B, 3, 3)`` each turned by ``degrees`` ``(B,)`` about a random axis."""
    axes = torch.nn.functional.normalize(torch.randn(len(rotations), 3, generator=generator, dtype=torch.float64),
                                         dim=-1)
    return rotations @ roma.rotvec_to_rotmat(axes * torch.deg2rad(degrees)[:, None])


def test_predict_poses_picks_the_candidate_the_decoder_itself_prefers():
    """The symmetrized candidates are judged on the cached map grid; the choice is the one that rendering
    through the decoder makes, except where the two candidates fit the image about equally well (both
    candidates lie within 12° of the truth, so that many pairs are close calls)."""
    problem = Problem(with_ctf=True, count=48, seed=3, snr=1.0)
    learner = CryoAILearner(config(box=SEARCH_BOX, input_box=SEARCH_BOX, pixel_size_angstrom=SEARCH_PIXEL,
                                   input_pixel_size_angstrom=SEARCH_PIXEL,
                                   mask_radius_angstrom=SEARCH_BOX * SEARCH_PIXEL))
    learner.decoder = FunctionModule(problem.map)
    generator = torch.Generator().manual_seed(4)
    origins = problem.origins_px * SEARCH_PIXEL
    candidates = [_turned(problem.rotations, torch.rand(48, generator=generator, dtype=torch.float64) * 12.0,
                          generator) for _ in range(2)]
    learner.encoder = ScriptedEncoder((candidates[0].float(), origins.float()),
                                      (compose_in_plane_180(candidates[1]).float(), -origins.float()))
    ctf_params = torch.as_tensor(problem.ctf_params)
    images = problem.images.float()
    rotations, predicted_origins = learner.predict_poses(images, ctf_params)

    disk = learner.disk(learner.config.nyquist_radius_px)
    targets, ctf = learner.spectra(images, disk), learner.ctf_values(ctf_params, disk)
    rendered = torch.stack([weighted_distances(render(learner.decoder, candidate.float(),
                                                      origins.float() / SEARCH_PIXEL, ctf, disk),
                                               targets, disk.weights) for candidate in candidates])
    cached = torch.stack([learner.search.distances(learner.cached_map(disk), targets, ctf, disk, candidate.float(),
                                                   origins.float() / SEARCH_PIXEL) for candidate in candidates])
    torch.testing.assert_close(cached, rendered, rtol=0.03, atol=0)
    by_decoder = rendered[1] < rendered[0]
    chose_second = torch.rad2deg(geodesic_angle(rotations.double(), candidates[1])) < 0.1
    chose_first = torch.rad2deg(geodesic_angle(rotations.double(), candidates[0])) < 0.1
    assert (chose_first ^ chose_second).all()
    torch.testing.assert_close(predicted_origins.double(), origins, atol=1e-4, rtol=0)
    disagree = chose_second != by_decoder
    gap = (rendered[0] - rendered[1]).abs() / rendered.min(dim=0).values
    assert disagree.float().mean() <= 0.05 and (gap[disagree] < 0.02).all()
    assert (~by_decoder).any() and by_decoder.any()
    fitted, _ = learner.fit_terms(images, ctf_params, rotations, predicted_origins)
    torch.testing.assert_close(fitted, torch.where(chose_second, rendered[1], rendered[0]), rtol=0.03, atol=0)
