"""How well the global pose search finds poses when the map is right: one JSON line per setting.

A reference map is backprojected (Wiener-filtered, :mod:`cryoai_core.reconstruct`) from one simulated set
with its true poses; the global search (:class:`cryoai_core.pose_search.PoseSearch`, the training
defaults at the set's box) then finds the poses of the first ``--count`` particles of another set of the
same case, compared with their truth (median angle, fraction within 20°) along with the search's CPU
seconds per image. This separates what the search can do from what training gives it: a learner cannot
find better poses than its search does against the right map.

Each line also scores every particle at its *true* pose against the same map. A wrong pose (beyond 20°)
whose distance is larger than the true pose's is a search failure (a closer pose exists and the search
missed it); one whose distance is smaller is what the data themselves prefer at this SNR and map, which
no search can undo (``wrong_closer_than_truth``).

Example, with the sets ``realistic.py`` keeps (its held-out set as reference, its training set as test):
    python benchmarks/oracle_search.py runs/b_seed1/heldout_2000/particles.star \\
        runs/b_seed1/sim_30000/particles.star --count 256 --tag b --candidates 16 64 --finalists 1 8

``--max-shift-fraction``/``--shift-points`` change the translation grid; ``--centre-particles`` moves the
test images by the particles' mean origin first, as training does.
"""
import argparse
import itertools
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cryoai_core.allocator import retain_freed_memory  # noqa: E402
from cryoai_core.ctf import CTFParams, compute_ctf  # noqa: E402
from cryoai_core.evaluate.poses import pose_errors  # noqa: E402
from cryoai_core.fourier import fft2_centered  # noqa: E402
from cryoai_core.gold_standard import reference_grid  # noqa: E402
from cryoai_core.io.dataset import ParticleDataset  # noqa: E402
from cryoai_core.io.star import read_star  # noqa: E402
from cryoai_core.models.forward_model import HalfDisk  # noqa: E402
from cryoai_core.pose_search import PoseSearch  # noqa: E402
from cryoai_core.recentre import centred_on_average, mean_particle_origin_px  # noqa: E402
from cryoai_core.reconstruct import reconstruct_halves, split_halves  # noqa: E402
from cryoai_core.rotations import euler_to_matrix, geodesic_angle  # noqa: E402
from cryoai_core.train.config import SearchConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="star of a simulated set with true poses: the map is made from it")
    parser.add_argument("test", help="star of another set of the same case, true poses in it")
    parser.add_argument("--count", type=int, default=256, help="particles of the test set searched")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, SearchConfig.candidates])
    parser.add_argument("--finalists", type=int, nargs="+", default=[1],
                        help="finalists of the knock-out refinement (each with every --candidates value)")
    parser.add_argument("--rotations", type=int, default=SearchConfig.rotations, help="rotations of the grid")
    parser.add_argument("--shift-points", type=int, default=SearchConfig.shift_points,
                        help="points per axis of the coarse translation grid")
    parser.add_argument("--max-shift-fraction", type=float, default=SearchConfig.max_shift_fraction,
                        help="reach of the translation grid, fraction of the box per axis")
    parser.add_argument("--centre-particles", action="store_true",
                        help="move the test images by the particles' mean origin first, as training does "
                             "(estimated from 1 000 images of the test set, cryoai_core/recentre.py)")
    parser.add_argument("--tag", default="", help="name of the case in the JSON lines")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    reference = read_star(args.reference)
    dataset = ParticleDataset(reference)
    result = reconstruct_halves(dataset, reference.euler_angles_degrees, reference.origins_angstrom,
                                split_halves(len(dataset), 0))
    grid = reference_grid(result.full, dataset.pixel_size_angstrom)
    table = read_star(args.test)
    mean_origin_px = mean_particle_origin_px(ParticleDataset(table), generator=torch.Generator().manual_seed(0)) \
        if args.centre_particles else np.zeros(2)
    table = table.subset(np.arange(min(args.count, len(table))))
    test = ParticleDataset(table)
    box, pixel = test.box, test.pixel_size_angstrom
    disk = HalfDisk(box, box // 2 - 1)
    config = SearchConfig()
    shift_step_px = 2.0 * args.max_shift_fraction * box / (args.shift_points - 1)
    truth = euler_to_matrix(table.euler_angles_degrees).double()
    truth_origins_px = torch.as_tensor(table.origins_angstrom / pixel).float()
    shift = torch.as_tensor(mean_origin_px, dtype=torch.float32)
    for candidates, finalists in itertools.product(args.candidates, args.finalists):
        search = PoseSearch(num_rotations=args.rotations, max_shift_px=args.max_shift_fraction * box,
                            shift_points=args.shift_points, coarse_radius_px=box / (2.0 * shift_step_px),
                            refine_steps=config.refine_steps, candidates=candidates, finalists=finalists)
        found, origins, found_distances, true_distances, cpu = [], [], [], [], time.process_time()
        for start in range(0, len(test), args.batch_size):
            rows = list(range(start, min(start + args.batch_size, len(test))))
            batch = test.__getitems__(rows)
            targets = disk.gather(fft2_centered(centred_on_average(batch["image"].float(), mean_origin_px)))
            ctf = compute_ctf(disk.freqs_px.double() / pixel, CTFParams.from_array(batch["ctf"].double())).float()
            searched = search.search(grid, targets, ctf, disk, torch.Generator().manual_seed(0))
            found.append(searched.rotations)
            origins.append(searched.origins_px + shift)
            found_distances.append(searched.distances)
            cpu_spent = time.process_time()
            true_distances.append(search.distances(grid, targets, ctf, disk, truth[rows].float(),
                                                   truth_origins_px[rows] - shift))
            cpu -= time.process_time() - cpu_spent
        rotations = torch.cat(found).double()
        errors = pose_errors(rotations, truth, torch.cat(origins).double().numpy(), truth_origins_px.double().numpy(),
                             try_mirror=False)
        wrong = torch.rad2deg(geodesic_angle(rotations, truth)) > 20.0   # the map is in the truth's frame
        closer = torch.cat(found_distances) <= torch.cat(true_distances)
        print(json.dumps({"benchmark": "oracle_search", "case": args.tag, "box": box, "particles": len(test),
                          "reference_particles": len(dataset), "reference_half_map_px": result.resolution_pixels,
                          "rotations": args.rotations, "shift_points": args.shift_points, "candidates": candidates,
                          "finalists": search.finalists,
                          "median_angle_degrees": round(errors["median_angle_degrees"], 2),
                          "fraction_within_20_degrees": round(errors["fraction_within_20_degrees"], 3),
                          "wrong_closer_than_truth": round(float((wrong & closer).float().mean()), 3),
                          "wrong_search_failures": round(float((wrong & ~closer).float().mean()), 3),
                          "median_shift_error_px": round(errors["median_shift_error_px"], 3),
                          "max_shift_fraction": args.max_shift_fraction,
                          "mean_origin_px": [round(float(value), 2) for value in mean_origin_px],
                          "cpu_s_per_image": round((time.process_time() - cpu) / len(test), 4),
                          "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
