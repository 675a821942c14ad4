"""The learner: both phases run and learn, and the pose of the winning symmetrized path is converted back."""
import pytest
import torch

from cryoai_core.rotations import compose_in_plane_180, geodesic_angle, random_rotations
from cryoai_core.slicing import VoxelFourierVolume
from cryoai_core.train.config import TrainConfig
from cryoai_core.train.learner import CryoAILearner

BOX = 16
PIXEL = 4.0


def blob_map(seed: int) -> torch.Tensor:
    """An asymmetric map of a few Gaussian blobs ``(BOX,)*3``."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    volume = torch.zeros(BOX, BOX, BOX, dtype=torch.float64)
    for _ in range(4):
        centre = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * 6
        volume += torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / 3.0)
    return volume


def config(**changes) -> TrainConfig:
    values = dict(box=BOX, pixel_size_angstrom=PIXEL, input_box=BOX, input_pixel_size_angstrom=PIXEL, epochs=1,
                  batch_size=8, search_rotations=128, decoder_width=16, encoder_base_channels=4)
    values.update(changes)
    return TrainConfig(**values)


class TrueMap(torch.nn.Module):
    """A decoder that returns the transform of a known map (coordinates in cycles per pixel)."""

    def __init__(self, volume: VoxelFourierVolume, scale: float):
        super().__init__()
        self.volume, self.scale = volume, scale

    def forward(self, coords):
        return (self.volume.sample(coords.double() / PIXEL) * self.scale).to(torch.complex64)


class ScriptedEncoder(torch.nn.Module):
    """Returns the given poses: first call (the images), second call (their 180° rotations)."""

    def __init__(self, direct, flipped):
        super().__init__()
        self.answers = [direct, flipped]

    def forward(self, images):
        rotations = self.answers.pop(0)
        return rotations, torch.zeros(len(rotations), 2), None


@pytest.mark.parametrize("right_path", ["direct", "flipped"])
def test_predict_poses_converts_the_winning_path_back_to_the_image(right_path):
    volume = VoxelFourierVolume(blob_map(0), PIXEL, oversampling=2)
    truth = random_rotations(6, torch.Generator().manual_seed(1)).double()
    images = volume.project(truth, BOX, PIXEL).float()
    wrong = random_rotations(6, torch.Generator().manual_seed(2)).double()
    learner = CryoAILearner(config(mask_radius_angstrom=BOX * PIXEL))
    disk = learner.disk(learner.config.nyquist_radius_px)
    targets = learner.spectra(images, disk)
    rendered = volume.sample(torch.einsum("nk,bkj->bnj", torch.nn.functional.pad(disk.freqs_px.double(), (0, 1)),
                                          truth) / PIXEL)
    scale = ((rendered.conj() * targets).real.sum() / (rendered.abs() ** 2).sum()).item()
    learner.decoder = TrueMap(volume, scale)
    if right_path == "direct":
        learner.encoder = ScriptedEncoder(truth.float(), wrong.float())
    else:
        learner.encoder = ScriptedEncoder(wrong.float(), compose_in_plane_180(truth).float())
    rotations, origins = learner.predict_poses(images, None)
    assert torch.rad2deg(geodesic_angle(rotations.double(), truth)).max() < 0.1
    assert origins.abs().max() == 0


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
