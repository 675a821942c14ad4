"""Off-centre particles: are shifts up to ±15 % of the box recovered by the pose search and by the encoder's
shift head? One JSON line per case.

A case's structure (``realistic.py``'s maps: EMD-21457 at 32 px / 3 Å for case a, 6ZU5 at 64 px / 8 Å for
case b) is projected at uniform random rotations with origins drawn uniformly in ±``--max-shift-fraction``
of the box on each axis, with CTF and noise at ``--snr``. Then:

- **search**: the global search with the training defaults (:class:`~cryoai_core.pose_search.PoseSearch`,
  the settings of :class:`~cryoai_core.train.config.TrainConfig`) against the true map finds the poses of
  ``--count`` images;
- **encoder**: the pose encoder (training defaults, shift head bounded to the search's reach) is trained on
  ``--train`` images with their true poses, as the bootstrap teaches it the search's poses (squared
  Frobenius + ``shift_loss_weight`` x squared shift error, ``--steps`` Adam steps), and predicts the origins
  of the ``--count`` unseen images.

Reported per method: the median shift error (px) overall and in three bands of the larger shift
component (0-5, 5-10, 10-15 % of the box), the median rotation error, and for comparison the error of
guessing the box centre. CPU seconds per image of the search; wall seconds of the encoder's training.

Example:
    python benchmarks/shift_recovery.py --case b --count 512 --train 6000 --steps 600 --threads 1
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from cryoai_core.ctf import CTFParams, compute_ctf  # noqa: E402
from cryoai_core.fourier import fft2_centered  # noqa: E402
from cryoai_core.io.mrc import read_mrc  # noqa: E402
from cryoai_core.models.encoder import PoseEncoder  # noqa: E402
from cryoai_core.models.forward_model import HalfDisk  # noqa: E402
from cryoai_core.pose_search import PoseSearch, network_grid  # noqa: E402
from cryoai_core.rotations import geodesic_angle, random_rotations  # noqa: E402
from cryoai_core.simulate import ImageSimulator, SimulationConfig, draw_parameters  # noqa: E402
from cryoai_core.train.config import build  # noqa: E402

BANDS = ((0.0, 0.05), (0.05, 0.10), (0.10, 0.15))
"""Bands of the larger shift component, as fractions of the box."""


def simulate(simulator, config, count: int, max_shift_px: float, noise_sigma: float, generator):
    """``count`` noisy images with uniform rotations and origins uniform in ``±max_shift_px`` per axis."""
    params = draw_parameters(config, count, generator)
    rotations = random_rotations(count, generator).double()
    origins = (torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1) * max_shift_px
    images = simulator.images(rotations, origins * simulator.pixel_size_angstrom, params.ctf)
    images = images + noise_sigma * torch.randn(images.shape, generator=generator)
    return images, rotations, origins, params.ctf


def banded(errors: np.ndarray, origins: np.ndarray, box: int) -> dict:
    largest = np.abs(origins).max(axis=1) / box
    report = {"all": round(float(np.median(errors)), 3)}
    for low, high in BANDS:
        chosen = (largest >= low) & (largest <= high)
        report[f"{low * 100:.0f}-{high * 100:.0f}%"] = round(float(np.median(errors[chosen])), 3) if chosen.any() else None
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("a", "b"), default="b")
    parser.add_argument("--count", type=int, default=512, help="test images")
    parser.add_argument("--train", type=int, default=6000, help="images the encoder learns from")
    parser.add_argument("--steps", type=int, default=600, help="encoder training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--max-shift-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import realistic

    case = realistic.CASES[args.case]
    box, pixel = case["box"], case["pixel"]
    with tempfile.TemporaryDirectory() as folder:
        path, _ = realistic.structure_map(case, folder)
        volume, voxel = read_mrc(path)
    sim_config = SimulationConfig(num_particles=args.count, box=box, pixel_size_angstrom=pixel, apply_ctf=True)
    on_grid = ImageSimulator(torch.from_numpy(np.asarray(volume, dtype=np.float32)), voxel, sim_config).reference_map()
    simulator = ImageSimulator(on_grid, pixel, sim_config)
    config = build(box=box, pixel_size_angstrom=pixel, input_box=box, input_pixel_size_angstrom=pixel)
    generator = torch.Generator().manual_seed(args.seed)
    max_shift_px = args.max_shift_fraction * box
    clean, _, _, _ = simulate(simulator, sim_config, 256, max_shift_px, 0.0, generator)
    noise_sigma = float((clean.var() / args.snr).sqrt())
    images, rotations, origins, ctf_params = simulate(simulator, sim_config, args.count, max_shift_px, noise_sigma,
                                                      generator)
    centre_guess = banded(np.linalg.norm(origins.numpy(), axis=1), origins.numpy(), box)

    # The search against the true map, in the units of the training loss (targets carry 1 / L).
    disk = HalfDisk(box, config.nyquist_radius_px)
    fourier = simulator.fourier_volume
    grid = network_grid(lambda coords: fourier.sample(coords.double() / pixel) * (pixel / box), box,
                        disk.max_radius_px, config.search.grid_oversampling)
    search = PoseSearch(num_rotations=config.search.rotations, max_shift_px=config.max_shift_px,
                        shift_points=config.search.shift_points, coarse_radius_px=config.coarse_radius_px,
                        refine_steps=config.search.refine_steps, candidates=config.search.candidates)
    found_rotations, found_origins, cpu = [], [], time.process_time()
    for start in range(0, args.count, 128):
        chunk = slice(start, min(start + 128, args.count))
        targets = disk.gather(fft2_centered(images[chunk])) / box
        ctf = compute_ctf(disk.freqs_px.double() / pixel, CTFParams.from_array(torch.as_tensor(ctf_params[chunk])))
        found = search.search(grid, targets, ctf.float(), disk, torch.Generator().manual_seed(args.seed))
        found_rotations.append(found.rotations.double())
        found_origins.append(found.origins_px.double())
    search_cpu = (time.process_time() - cpu) / args.count
    searched = torch.cat(found_origins).numpy()
    search_angles = torch.rad2deg(geodesic_angle(torch.cat(found_rotations), rotations)).numpy()

    # The encoder taught the true poses, then asked about unseen images.
    train_images, train_rotations, train_origins, _ = simulate(simulator, sim_config, args.train, max_shift_px,
                                                                noise_sigma, generator)
    std = float(train_images.std())
    torch.manual_seed(args.seed)
    encoder = PoseEncoder(config.encoder, box, max_shift_angstrom=config.max_shift_px * pixel)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.optimizer.lr_encoder, amsgrad=True)
    weight = config.bootstrap.shift_loss_weight
    started = time.time()
    encoder.train()
    for _ in range(args.steps):
        chosen = torch.randint(args.train, (args.batch_size,), generator=generator)
        predicted, predicted_origins, _ = encoder(train_images[chosen] / std)
        loss = (((predicted - train_rotations[chosen].float()) ** 2).sum(dim=(-2, -1))
                + weight * ((predicted_origins / pixel - train_origins[chosen].float()) ** 2).sum(dim=-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.optimizer.grad_clip)
        optimizer.step()
    train_seconds = time.time() - started
    encoder.eval()
    with torch.no_grad():
        predicted, predicted_origins, _ = encoder(images / std)
    encoded = predicted_origins.double().numpy() / pixel
    encoder_angles = torch.rad2deg(geodesic_angle(predicted.double(), rotations)).numpy()

    true = origins.numpy()
    print(json.dumps({
        "benchmark": "shift_recovery", "case": args.case, "structure": case["structure"], "box": box,
        "pixel_angstrom": pixel, "snr": args.snr, "max_shift_fraction": args.max_shift_fraction,
        "test_images": args.count, "seed": args.seed,
        "centre_guess_median_shift_error_px": centre_guess,
        "search_median_shift_error_px": banded(np.linalg.norm(searched - true, axis=1), true, box),
        "search_median_angle_degrees": round(float(np.median(search_angles)), 2),
        "search_fraction_within_20_degrees": round(float(np.mean(search_angles <= 20)), 3),
        "search_cpu_s_per_image": round(search_cpu, 4),
        "encoder_median_shift_error_px": banded(np.linalg.norm(encoded - true, axis=1), true, box),
        "encoder_median_angle_degrees": round(float(np.median(encoder_angles)), 2),
        "encoder_train_images": args.train, "encoder_steps": args.steps, "encoder_train_s": round(train_seconds, 1),
        "threads": args.threads}))


if __name__ == "__main__":
    main()
