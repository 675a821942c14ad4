"""Keeping each particle's best pose, and the quarter-turn augmentation of the encoder's lessons."""
import pytest
import torch

from cryoai_core.fourier import rotate_180_in_plane, rotate_quarter_turns_in_plane
from cryoai_core.rotations import compose_in_plane_quarter_turns, geodesic_angle, in_plane_rotations, \
    random_rotations
from cryoai_core.simulate import ImageSimulator, SimulationConfig
from cryoai_core.train.checkpoint import read_checkpoint, restore_learner, save_checkpoint
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.pose_memory import PoseMemory
from search_problem import BOX, PIXEL, Problem, blob_map
from test_learner import FunctionModule, config


def test_quarter_turns_move_the_content_at_x_y_to_minus_y_x():
    image = torch.zeros(1, 8, 8)
    image[0, 4 + 1, 4 + 3] = 1.0  # (x, y) = (3, 1) from the centre pixel (4, 4)
    turned = rotate_quarter_turns_in_plane(image, torch.tensor([1]))
    assert turned[0, 4 + 3, 4 - 1] == 1.0 and turned.sum() == 1.0


def test_two_quarter_turns_are_the_180_rotation_and_four_the_identity():
    images = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    twice = rotate_quarter_turns_in_plane(images, torch.full((3,), 2))
    torch.testing.assert_close(twice, rotate_180_in_plane(images), rtol=0, atol=0)
    torch.testing.assert_close(rotate_quarter_turns_in_plane(images, torch.full((3,), 4)), images, rtol=0, atol=0)


def test_a_turned_projection_is_the_projection_at_the_turned_pose_and_origin():
    """The pose convention of the augmentation, from the simulator's independent image formation."""
    simulator = ImageSimulator(blob_map(2), PIXEL, SimulationConfig(num_particles=4, apply_ctf=False))
    generator = torch.Generator().manual_seed(3)
    rotations = random_rotations(4, generator).double()
    origins = (torch.rand(4, 2, generator=generator, dtype=torch.float64) - 0.5) * 8 * PIXEL
    turns = torch.tensor([0, 1, 2, 3])
    images = simulator.images(rotations, origins, None)
    turned_origins = (in_plane_rotations(turns * torch.pi / 2)[:, :2, :2].double() @ origins[..., None])[..., 0]
    expected = simulator.images(compose_in_plane_quarter_turns(rotations, turns), turned_origins, None)
    turned = rotate_quarter_turns_in_plane(images, turns)
    assert (turned - expected).abs().max() < 1e-3 * images.abs().max()
    wrong = simulator.images(compose_in_plane_quarter_turns(rotations, -turns), turned_origins, None)
    assert (turned[1] - wrong[1]).abs().max() > 0.1 * images.abs().max()


def test_the_memory_stores_and_returns_poses_by_particle():
    memory = PoseMemory(5)
    rotations = random_rotations(2, torch.Generator().manual_seed(0)).float()
    memory.put(torch.tensor([3, 1]), rotations, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    got, origins, known = memory.get(torch.tensor([1, 2, 3]))
    assert known.tolist() == [True, False, True]
    torch.testing.assert_close(got[[0, 2]], rotations[[1, 0]])
    torch.testing.assert_close(origins[0], torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="holds 5 particles"):
        PoseMemory(6).load_state_dict(memory.state_dict())


def refined_learner(**changes):
    values = dict(box=BOX, input_box=BOX, pixel_size_angstrom=PIXEL, input_pixel_size_angstrom=PIXEL,
                  mask_radius_angstrom=BOX * PIXEL, bootstrap=False, amortized_poses="refined",
                  search_global_every=1000, search_rotations=256)
    return CryoAILearner(config(**dict(values, **changes)))


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_remembered_pose_that_explains_the_image_better_than_the_encoder_is_kept(keep_best):
    """The encoder proposes wrong poses; the remembered true ones win (and the trained poses stay true) unless
    the memory is switched off, when only a local refinement around the wrong proposals is left."""
    problem = Problem(with_ctf=True, count=8, seed=4)
    learner = refined_learner(search_keep_best=keep_best)
    learner.attach_memory(20)
    learner.decoder = FunctionModule(problem.map)
    indices = torch.arange(10, 18)
    if keep_best:
        learner.memory.put(indices, problem.rotations.float(), problem.origins_px.float())
    trained = {}

    def record(images, targets, ctf, disk, rotations, origins_px, encoded=None):
        trained.update(rotations=rotations, origins_px=origins_px)
        return 0.0

    learner._train_on_poses = record
    learner.steps = 1  # not a global-search step
    learner.step(problem.images, torch.as_tensor(problem.ctf_params), progress=1.0,
                 generator=torch.Generator().manual_seed(5), indices=indices)
    errors = torch.rad2deg(geodesic_angle(trained["rotations"].double(), problem.rotations))
    if keep_best:
        assert errors.max() < 2.0
        remembered, _, known = learner.memory.get(indices)
        assert known.all() and torch.rad2deg(geodesic_angle(remembered.double(), problem.rotations)).max() < 2.0
    else:
        assert learner.memory is None and errors.median() > 20.0


def test_a_learner_with_a_memory_needs_the_particle_indices():
    learner = refined_learner()
    learner.attach_memory(4)
    with pytest.raises(ValueError, match="particle indices"):
        learner.step(torch.zeros(2, BOX, BOX), None, progress=0.0)


def test_the_memory_travels_with_the_checkpoint(tmp_path):
    learner = refined_learner()
    learner.attach_memory(6)
    rotations = random_rotations(6, torch.Generator().manual_seed(1)).float()
    learner.memory.put(torch.arange(6), rotations, torch.ones(6, 2))
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, learner, {}, torch.Generator())
    restored = refined_learner()
    restored.attach_memory(6)
    restore_learner(restored, read_checkpoint(path))
    torch.testing.assert_close(restored.memory.rotations, rotations)
    assert restored.memory.known.all()

