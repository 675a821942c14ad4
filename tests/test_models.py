"""FourierNet (Hermitian symmetry, map <-> slices), SIREN initialisation, the pose encoder, and the decoder's
half-disk and origin phase, checked against analytic facts and the simulator."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cryoai_core.fourier import fft2_centered, frequency_grid_2d, ifft3_centered
from cryoai_core.models.encoder import GaussianBank, PoseEncoder
from cryoai_core.models.forward_model import HalfDisk, render
from cryoai_core.models.fouriernet import FourierNet
from cryoai_core.models.onednn import linear, uses_onednn
from cryoai_core.models.siren import SineLayer, Siren
from cryoai_core.rotations import random_rotations
from cryoai_core.simulate import ImageSimulator, SimulationConfig
from cryoai_core.slicing import central_slice_coords
from cryoai_core.train.config import EncoderConfig, FourierNetConfig


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    net = FourierNet(FourierNetConfig(width=32, modulant_layers=2, envelope_layers=1), box=16)
    net.eval()
    return net


def grid_coords(box: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftfreq(box))


def test_fourier_net_is_exactly_hermitian_on_random_coordinates_and_the_kz_0_plane(network):
    rng = np.random.default_rng(0)
    random = rng.uniform(-0.5, 0.5, size=(300, 3))
    plane = np.column_stack([rng.uniform(-0.5, 0.5, size=(100, 2)), np.zeros(100)])
    k = grid_coords(16)
    axes = np.array([[k[i], 0.0, 0.0] for i in range(16)] + [[0.0, k[i], 0.0] for i in range(16)])
    coords = torch.from_numpy(np.concatenate([random, plane, axes])).float()
    coords = coords[coords.abs().sum(-1) > 0]
    with torch.no_grad():
        values = network(coords)
        mirrored = network(-coords)
    assert values.shape == (len(coords),) and values.is_complex()
    torch.testing.assert_close(mirrored, values.conj(), rtol=0, atol=0)
    assert values.imag.abs().max() > 1e-3


def test_fourier_net_value_at_the_origin_is_real(network):
    with torch.no_grad():
        value = network(torch.zeros(1, 3))
    assert value.imag.abs().item() == 0.0


def test_volume_is_real_consistent_and_its_z_projection_transform_is_the_kz_0_slice(network):
    box = 16
    with torch.no_grad():
        spectrum = network.spectrum(box)
        complex_map = ifft3_centered(spectrum)
        volume = network.volume(box)
    assert volume.shape == (box,) * 3 and not volume.is_complex()
    assert complex_map.imag.abs().max() < 1e-3 * complex_map.real.abs().max()
    # A = I: image(x, y) = Σ_z V(x, y, z) (voxel units), whose DFT is V̂(kx, ky, 0) on the grid.
    projection = volume.sum(dim=0).to(torch.float64)
    transform = fft2_centered(projection).numpy()
    k = grid_coords(box)
    kx, ky = np.meshgrid(k, k, indexing="xy")
    plane = torch.from_numpy(np.stack([kx, ky, np.zeros_like(kx)], axis=-1)).float()
    with torch.no_grad():
        expected = network(plane).numpy().astype(np.complex128)
    expected[0, :] = 0.0  # the -Nyquist row and column have no +Nyquist partner and are zero in a real map
    expected[:, 0] = 0.0
    dc = (box // 2, box // 2)
    assert transform[dc] == pytest.approx(expected[dc].real, abs=1e-5)
    expected[dc] = transform[dc]
    np.testing.assert_allclose(transform, expected, atol=2e-5 * np.abs(expected).max())


def test_volume_projection_along_x_matches_the_slice_of_a_tilt_90_pose(network):
    # tilt = 90°: A = [[0, 0, -1], [0, 1, 0], [1, 0, 0]], Aᵀ (x, y, z) = (z, y, -x),
    # so image[y, x] = Σ_x' V[-x, y, x'].
    box = 16
    rotation = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    with torch.no_grad():
        volume = network.volume(box).to(torch.float64)
    summed = volume.sum(dim=2).numpy()  # [z, y]
    image = summed[(box - np.arange(box)) % box, :].T  # image[y, x] = summed[-x, y]
    transform = fft2_centered(torch.from_numpy(image)).numpy()
    freqs = frequency_grid_2d(box).reshape(-1, 2)
    with torch.no_grad():
        expected = network(central_slice_coords(rotation, freqs)[0]).numpy().reshape(box, box)
    inner = (slice(1, None), slice(1, None))
    dc = (box // 2 - 1, box // 2 - 1)
    transform, expected = transform[inner], expected[inner].astype(np.complex128)
    expected[dc] = transform[dc]
    np.testing.assert_allclose(transform, expected, atol=2e-5 * np.abs(expected).max())


def test_siren_initialisation_ranges_and_unit_scale_preactivations():
    torch.manual_seed(1)
    hidden, omega = 256, 30.0
    siren = Siren(3, hidden, 2, 2, first_omega_0=omega, hidden_omega_0=omega)
    first, second = siren.body[0].linear, siren.body[1].linear
    for layer, bound in [(first, 1.0 / 3), (second, math.sqrt(6.0 / hidden) / omega)]:
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.95 * bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    head_bound = math.sqrt(6.0 / hidden) / omega
    assert siren.head.weight.abs().max() <= head_bound and siren.head.weight.abs().max() > 0.9 * head_bound
    assert torch.count_nonzero(siren.head.bias) == 0
    # With these ranges, ω0 (W x + b) of a hidden layer fed sines of unit-scale inputs has variance ~1.
    inputs = torch.rand(4000, 3) * 2 - 1
    with torch.no_grad():
        after_first = siren.body[0](inputs)
        preactivation = omega * second(after_first)
    assert preactivation.std().item() == pytest.approx(1.0, rel=0.2)


def test_sine_layer_is_the_sine_of_omega_times_the_affine_map_with_the_same_gradients():
    torch.manual_seed(3)
    layer = SineLayer(3, 8, omega_0=30.0, first=False)
    inputs = torch.randn(2, 5, 3, requires_grad=True)
    fused = layer(inputs)
    expected = torch.sin(30.0 * (inputs @ layer.linear.weight.T + layer.linear.bias))
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    weights = torch.randn(2, 5, 8)
    fused_grads = torch.autograd.grad((fused * weights).sum(), [inputs, layer.linear.weight, layer.linear.bias])
    expected_grads = torch.autograd.grad((expected * weights).sum(), [inputs, layer.linear.weight, layer.linear.bias])
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)


def test_onednn_linear_equals_torch_linear_and_falls_back_off_float32_cpu_tensors():
    torch.manual_seed(5)
    weight, bias = torch.randn(96, 96), torch.randn(96)
    for x in (torch.randn(1000, 96), torch.randn(1000, 192)[:, ::2], torch.randn(4, 7, 96), torch.zeros(0, 96)):
        torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(linear(x, weight.t()), F.linear(x, weight.t()), atol=1e-4, rtol=1e-5)
    doubles = torch.randn(5, 96, dtype=torch.float64)
    assert not uses_onednn(doubles)
    assert torch.equal(linear(doubles, weight.double(), bias.double()), F.linear(doubles, weight.double(), bias.double()))
    if torch.backends.mkldnn.is_available():
        assert uses_onednn(torch.zeros(1))  # this build takes the oneDNN path checked above


def test_sine_layer_backward_passes_the_numerical_gradient_check_with_and_without_an_input_gradient():
    torch.manual_seed(4)
    layer = SineLayer(4, 6, omega_0=30.0, first=False).double()

    def layer_of(inputs, weight, bias):
        return torch.func.functional_call(layer, {"linear.weight": weight, "linear.bias": bias}, (inputs,))

    weight = layer.linear.weight.detach().clone().requires_grad_(True)
    bias = layer.linear.bias.detach().clone().requires_grad_(True)
    for input_needs_grad in (True, False):  # a first layer's input (coordinates) needs no gradient
        inputs = torch.randn(7, 4, dtype=torch.float64, requires_grad=input_needs_grad)
        assert torch.autograd.gradcheck(layer_of, (inputs, weight, bias))


def test_pose_encoder_features_in_channels_last_layout_equal_the_plain_layout():
    torch.manual_seed(4)
    encoder = PoseEncoder(EncoderConfig(base_channels=4, max_channels=16, hidden_features=16), 32)
    plain = copy.deepcopy(encoder.features).to(memory_format=torch.contiguous_format)
    assert encoder.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(6, 32, 32)
    normalized = encoder.normalize(images)
    latent = encoder.trunk(encoder.features(normalized.contiguous(memory_format=torch.channels_last)))
    expected = encoder.trunk(plain(normalized.contiguous()))
    torch.testing.assert_close(latent, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("box", [32, 64])
def test_pose_encoder_outputs_rotations_and_origins(box):
    torch.manual_seed(2)
    encoder = PoseEncoder(EncoderConfig(base_channels=4, max_channels=16, hidden_features=16), box,
                          max_shift_angstrom=5.0)
    encoder.eval()
    with torch.no_grad():
        rotations, origins, sixd = encoder(torch.randn(3, box, box))
    assert rotations.shape == (3, 3, 3) and origins.shape == (3, 2) and sixd.shape == (3, 6)
    identity = torch.eye(3).expand(3, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(3), atol=1e-5, rtol=0)
    first = sixd[:, :3] / sixd[:, :3].norm(dim=1, keepdim=True)
    torch.testing.assert_close(rotations[:, :, 0], first, atol=1e-5, rtol=0)
    assert origins.abs().max() <= 5.0


@pytest.mark.parametrize("box", [15, 12, 33])
def test_pose_encoder_rejects_odd_or_tiny_boxes(box):
    with pytest.raises(ValueError, match="even box"):
        PoseEncoder(EncoderConfig(), box)


def test_gaussian_bank_keeps_the_image_at_sigma_0_and_blurs_with_a_normalised_gaussian():
    box = 32
    bank = GaussianBank(box, (0.0, 2.0))
    images = torch.randn(2, box, box, dtype=torch.float32)
    filtered = bank(images)
    assert filtered.shape == (2, 2, box, box)
    torch.testing.assert_close(filtered[:, 0], images, atol=1e-5, rtol=0)
    delta = torch.zeros(1, box, box)
    delta[0, box // 2, box // 2] = 1.0
    blurred = bank(delta)[0, 1].numpy()
    coords = np.arange(box) - box // 2
    r2 = coords[None, :] ** 2 + coords[:, None] ** 2
    expected = np.exp(-r2 / (2 * 2.0 ** 2)) / (2 * np.pi * 2.0 ** 2)
    np.testing.assert_allclose(blurred, expected, atol=1e-5)
    # Off centre, next to a corner: the same Gaussian about that pixel, wrapped around the box (the filter is
    # a circular convolution, whichever way the spectrum is centred).
    corner = torch.zeros(1, box, box)
    corner[0, 1, box - 2] = 1.0
    y = ((np.arange(box) - 1 + box // 2) % box - box // 2)[:, None]
    x = (np.arange(box) - (box - 2) + box // 2) % box - box // 2
    expected = np.exp(-(x ** 2 + y ** 2) / (2 * 2.0 ** 2)) / (2 * np.pi * 2.0 ** 2)
    np.testing.assert_allclose(bank(corner)[0, 1].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("box, radius", [(16, 5.0), (16, 7.5), (24, 11.0)])
def test_half_disk_weights_count_the_full_disk_once(box, radius):
    disk = HalfDisk(box, radius)
    k = np.arange(box) - box // 2
    kx, ky = np.meshgrid(k, k, indexing="xy")
    full = kx ** 2 + ky ** 2 <= radius ** 2
    assert disk.weights.sum().item() == full.sum()
    points = {tuple(p) for p in np.rint(disk.freqs_px.numpy() * box).astype(int)}
    mirrored = {(-x, -y) for x, y in points}
    assert points & mirrored == {(0, 0)}
    assert points | mirrored == {(x, y) for x, y in zip(kx[full], ky[full])}
    np.testing.assert_allclose(disk.radius_px.numpy(), np.hypot(*disk.freqs_px.numpy().T) * box, atol=1e-5)
    centred = disk.flat_index.numpy()
    np.testing.assert_array_equal(kx.ravel()[centred], np.rint(disk.freqs_px[:, 0].numpy() * box))
    np.testing.assert_array_equal(ky.ravel()[centred], np.rint(disk.freqs_px[:, 1].numpy() * box))


def test_half_disk_parseval_for_a_real_image_band_limited_to_the_disk():
    box, radius = 16, 6.0
    rng = np.random.default_rng(3)
    k = np.arange(box) - box // 2
    kx, ky = np.meshgrid(k, k, indexing="xy")
    spectrum = (rng.normal(size=(box, box)) + 1j * rng.normal(size=(box, box))) * (kx ** 2 + ky ** 2 <= radius ** 2)
    image = np.fft.ifft2(np.fft.ifftshift(spectrum)).real  # real part: Hermitian-symmetrised, still in the disk
    disk = HalfDisk(box, radius)
    values = disk.gather(fft2_centered(torch.from_numpy(image)).unsqueeze(0))[0].numpy()
    half_sum = float((disk.weights.numpy() * np.abs(values) ** 2).sum())
    assert half_sum == pytest.approx(box ** 2 * (image ** 2).sum(), rel=1e-10)


def gaussian_blobs():
    return (np.array([1.0, 0.6]), np.array([[3.0, -2.0, 1.0], [-2.5, 2.0, -3.0]]), np.array([3.0, 2.5]))


def test_render_of_an_analytic_map_equals_the_dft_of_the_relion_particle_image():
    # Continuous FT of a·exp(-|r - c|²/2σ²) is a (2πσ²)^{3/2} exp(-2π²σ²|k|²) exp(-2πi k·c);
    # the DFT of the sampled projection image is the continuous transform of the projection divided by
    # the pixel area.
    box, pixel = 32, 1.5
    amplitudes, centres, sigmas = gaussian_blobs()

    def volume(coords_px):
        k = coords_px.to(torch.float64).numpy() / pixel
        value = np.zeros(k.shape[:-1], dtype=np.complex128)
        for a, c, s in zip(amplitudes, centres, sigmas):
            value += a * (2 * np.pi * s ** 2) ** 1.5 * np.exp(-2 * np.pi ** 2 * s ** 2 * (k ** 2).sum(-1)
                                                              - 2j * np.pi * k @ c)
        return torch.from_numpy(value / pixel ** 2)

    rotations = random_rotations(3, torch.Generator().manual_seed(4), dtype=torch.float32)
    origins_angstrom = np.array([[4.5, -3.0], [-2.0, 0.0], [0.0, 6.0]])
    disk = HalfDisk(box, 15.0)
    rendered = render(volume, rotations, torch.from_numpy(origins_angstrom / pixel).float(), None, disk).numpy()
    grid = (np.arange(box) - box // 2) * pixel
    y, x = np.meshgrid(grid, grid, indexing="ij")
    for matrix, origin, values in zip(rotations.double().numpy(), origins_angstrom, rendered):
        image = np.zeros((box, box))
        for a, c, s in zip(amplitudes, centres, sigmas):
            u, v, _ = matrix @ c
            image += a * np.sqrt(2 * np.pi) * s * np.exp(-((x - u + origin[0]) ** 2 + (y - v + origin[1]) ** 2)
                                                         / (2 * s ** 2))
        expected = disk.gather(fft2_centered(torch.from_numpy(image)).unsqueeze(0))[0].numpy()
        assert np.linalg.norm(values - expected) < 1e-4 * np.linalg.norm(expected)


def test_render_with_the_simulator_volume_reproduces_simulated_particles():
    box, pixel = 24, 2.0
    amplitudes, centres, sigmas = gaussian_blobs()
    grid = (np.arange(box) - box // 2) * pixel
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    volume = sum(a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s ** 2))
                 for a, c, s in zip(amplitudes, centres, sigmas))
    simulator = ImageSimulator(torch.from_numpy(volume), pixel, SimulationConfig(num_particles=1, apply_ctf=False))
    rotations = random_rotations(3, torch.Generator().manual_seed(5))
    origins = torch.tensor([[3.0, -4.0], [-5.0, 1.0], [0.0, 2.5]], dtype=torch.float64)
    images = simulator.images(rotations, origins, np.zeros((3, 8)))
    disk = HalfDisk(box, 11.0)
    targets = disk.gather(fft2_centered(images.to(torch.float64))).numpy()
    fourier_volume = simulator.fourier_volume

    def volume_function(coords_px):
        # The simulator's projection DFT is sample(k / p) · p³ / P²; here P = p.
        return fourier_volume.sample(coords_px / pixel) * pixel

    rendered = render(volume_function, rotations.float(), (origins / pixel).float(), None, disk).numpy()
    wrong_sign = render(volume_function, rotations.float(), (-origins / pixel).float(), None, disk).numpy()
    for values, wrong, expected in zip(rendered, wrong_sign, targets):
        assert np.linalg.norm(values - expected) < 1e-4 * np.linalg.norm(expected)
        assert np.linalg.norm(wrong - expected) > 0.3 * np.linalg.norm(expected)
