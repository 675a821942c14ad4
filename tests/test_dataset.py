"""ParticleDataset: lazy reads by index@stack, Fourier-crop downsampling, batching, workers and errors."""
import pickle

import mrcfile
import numpy as np
import pytest
import torch

from cryoai_core.fourier import resample_images
from cryoai_core.io.dataset import ParticleDataset, collate, normalization_stats
from cryoai_core.io.particles import ParticleTable

BOX = 32


def make_stack(path, images, pixel_size=1.5):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return str(path)


@pytest.fixture
def particles(tmp_path):
    """Two stacks of random images and a table that visits them out of order; returns (table, images)."""
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, BOX, BOX)), rng.normal(size=(4, BOX, BOX))
    stacks = (make_stack(tmp_path / "a.mrcs", first), make_stack(tmp_path / "b.mrcs", second))
    stack_ids = np.array([1, 0, 0, 1, 0, 1, 0, 1, 0], dtype=np.int32)
    image_indices = np.array([3, 4, 0, 0, 2, 1, 1, 2, 3])
    expected = np.stack([(second if s else first)[i] for s, i in zip(stack_ids, image_indices)]).astype(np.float32)
    ctf = rng.uniform(1.0, 2.0, size=(9, 8))
    table = ParticleTable(stack_files=stacks, stack_ids=stack_ids, image_indices=image_indices,
                          pixel_size_angstrom=1.5, box=BOX, ctf=ctf,
                          euler_angles_degrees=rng.uniform(-180, 180, (9, 3)),
                          origins_angstrom=rng.normal(size=(9, 2)))
    return table, expected


def test_items_hold_image_ctf_pose_and_index(particles):
    table, expected = particles
    dataset = ParticleDataset(table)
    assert len(dataset) == 9 and dataset.box == BOX and dataset.pixel_size_angstrom == 1.5
    item = dataset[4]
    assert set(item) == {"image", "ctf", "index", "euler_angles_degrees", "origins_angstrom"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (BOX, BOX)
    np.testing.assert_array_equal(item["image"].numpy(), expected[4])
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 4
    np.testing.assert_allclose(item["ctf"].numpy(), table.ctf[4], rtol=1e-6)
    np.testing.assert_allclose(item["euler_angles_degrees"].numpy(), table.euler_angles_degrees[4], rtol=1e-6)
    np.testing.assert_allclose(item["origins_angstrom"].numpy(), table.origins_angstrom[4], rtol=1e-6)
    np.testing.assert_array_equal(dataset[-1]["image"].numpy(), expected[8])
    with pytest.raises(IndexError):
        dataset[9]


def test_no_ctf_or_poses_means_no_keys(particles):
    table, expected = particles
    bare = ParticleTable(stack_files=table.stack_files, stack_ids=table.stack_ids, image_indices=table.image_indices,
                         pixel_size_angstrom=1.5, box=BOX)
    item = ParticleDataset(bare, invert_contrast=True)[2]
    assert set(item) == {"image", "index"}
    np.testing.assert_array_equal(item["image"].numpy(), -expected[2])


def test_getitems_equals_stacked_getitem(particles):
    table, _ = particles
    dataset = ParticleDataset(table, box=16)
    indices = [7, 0, 3, 3, 8, 1]
    batch = dataset.__getitems__(indices)
    singles = [dataset[i] for i in indices]
    assert set(batch) == set(singles[0])
    for key in batch:
        torch.testing.assert_close(batch[key], torch.stack([item[key] for item in singles]))


def test_downsampling_keeps_low_frequencies_and_pixel_size(particles):
    table, expected = particles
    dataset = ParticleDataset(table, box=16)
    assert dataset.box == 16 and dataset.pixel_size_angstrom == pytest.approx(3.0)
    images = dataset.__getitems__(list(range(9)))["image"].numpy()
    torch.testing.assert_close(torch.from_numpy(images), resample_images(torch.from_numpy(expected), 16))

    def spectrum(x):
        return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1))

    low = spectrum(expected.astype(np.float64))[:, 8:24, 8:24]
    # Frequencies below Nyquist of the new grid are kept (values scaled by (16/32)² to keep the mean).
    np.testing.assert_allclose(spectrum(images.astype(np.float64))[:, 1:, 1:] * 4, low[:, 1:, 1:], atol=1e-3)
    np.testing.assert_allclose(images.mean(axis=(1, 2)), expected.mean(axis=(1, 2)), atol=1e-5)


def test_bad_boxes(particles):
    table, _ = particles
    with pytest.raises(ValueError, match="even"):
        ParticleDataset(table, box=15)
    with pytest.raises(ValueError, match="cannot exceed"):
        ParticleDataset(table, box=64)


def test_index_out_of_stack_range_fails_at_construction(particles):
    table, _ = particles
    indices = table.image_indices.copy()
    indices[5] = 4  # stack b holds 4 images
    bad = ParticleTable(stack_files=table.stack_files, stack_ids=table.stack_ids, image_indices=indices,
                        pixel_size_angstrom=1.5, box=BOX)
    with pytest.raises(ValueError,
                       match=r"image 000005@.*b.mrcs \(particle 6 in file order\) is out of range: .* only 4 images"):
        ParticleDataset(bad)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_image_names_the_particle(tmp_path):
    images = np.ones((3, 8, 8), dtype=np.float32)
    images[2, 4, 4] = np.nan
    stack = make_stack(tmp_path / "nan.mrcs", images)
    table = ParticleTable(stack_files=(stack,), stack_ids=np.zeros(3, np.int32), image_indices=np.arange(3),
                          pixel_size_angstrom=1.0, box=8)
    dataset = ParticleDataset(table)
    dataset[1]
    with pytest.raises(ValueError, match=r"image 000003@.*nan.mrcs \(data set index 2\) contains NaN"):
        dataset[2]
    with pytest.raises(ValueError, match="000003@"):
        dataset.__getitems__([0, 2])


def test_pickles_without_memory_maps(particles):
    table, expected = particles
    dataset = ParticleDataset(table)
    dataset[0]  # opens a memory map in this process
    state = pickle.dumps(dataset)
    assert len(state) < 8000  # the table only, no image data
    np.testing.assert_array_equal(pickle.loads(state)[3]["image"].numpy(), expected[3])


def test_dataloader_with_workers(particles):
    table, expected = particles
    dataset = ParticleDataset(table, box=16)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    reference = resample_images(torch.from_numpy(expected), 16)
    for batch in loader:
        assert batch["image"].shape[1:] == (16, 16) and batch["ctf"].shape[1:] == (8,)
        torch.testing.assert_close(batch["image"], reference[batch["index"]])
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(9))


def test_default_collate_gets_a_clear_error(particles):
    table, _ = particles
    loader = torch.utils.data.DataLoader(ParticleDataset(table), batch_size=2)
    with pytest.raises(TypeError, match="collate_fn=cryoai_core.io.dataset.collate"):
        next(iter(loader))


def test_normalization_stats(particles):
    table, expected = particles
    dataset = ParticleDataset(table)
    mean, std = normalization_stats(dataset, num_samples=100)
    assert mean == pytest.approx(expected.astype(np.float64).mean(), abs=1e-6)
    assert std == pytest.approx(expected.astype(np.float64).std(), rel=1e-6)
    subset = [normalization_stats(dataset, num_samples=3, generator=torch.Generator().manual_seed(5))
              for _ in range(2)]
    assert subset[0] == subset[1]
    assert subset[0] != (mean, std)
