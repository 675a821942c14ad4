"""Pose refinement after training on a known map: speed and accuracy of ``CryoAILearner.refine_poses`` against
refining both starts to the end (the code before ``PoseSearch.search_or_refine``). Prints one JSON line per mode.

The decoder is the simulator's map itself (the ``reference.mrc`` of ``cryoai simulate``, scaled to the images
by least squares at the true poses), so the figures measure the search, not training. The starting poses
stand in for an encoder that is partly right: ``--good-fraction`` of the particles start ``|N(0, 10°)|``
from the truth with 1 px of shift noise, the rest at random rotations and no shift.

Modes: ``both`` (local refinement and global search each to the end, the lower distance wins) and ``export``
(``refine_poses`` with the settings given, e.g. ``--tie-fraction`` and ``--edge-px``).

Example (64 px, SNR 0.02):
    cryoai simulate -o sim02 -n 1024 --box 64 --snr 0.02 --shift-sigma 3
    nice python benchmarks/refine_bed.py sim02 --limit 512
"""
import argparse
import json
import math
import time

import numpy as np
import roma
import torch

from cryoai_core.allocator import retain_freed_memory
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.io.readers import read_particles
from cryoai_core.models.forward_model import render
from cryoai_core.rotations import euler_to_matrix, random_rotations
from cryoai_core.slicing import VoxelFourierVolume
from cryoai_core.train.config import SearchConfig, build
from cryoai_core.train.learner import CryoAILearner


class KnownMap(torch.nn.Module):
    """A decoder that returns ``scale`` times the transform of a map (coordinates in cycles per pixel)."""

    def __init__(self, volume: VoxelFourierVolume, pixel_size_angstrom: float):
        super().__init__()
        self.volume, self.pixel, self.scale = volume, pixel_size_angstrom, 1.0

    def forward(self, coords):
        return (self.volume.sample(coords.double() / self.pixel) * self.scale).to(torch.complex64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="output folder of cryoai simulate (particles.star, reference.mrc)")
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--good-fraction", type=float, default=0.6)
    parser.add_argument("--tie-fraction", type=float, default=SearchConfig.refine_tie_fraction)
    parser.add_argument("--edge-px", type=float, default=SearchConfig.refine_edge_px)
    parser.add_argument("--modes", nargs="+", choices=("both", "export"), default=["both", "export"])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_num_threads(1)
    truth = read_particles(f"{args.folder}/particles.star")
    truth = truth.subset(np.arange(min(args.limit, len(truth))))
    count, box, pixel = len(truth), truth.box, truth.pixel_size_angstrom
    volume, voxel = read_mrc(f"{args.folder}/reference.mrc")
    decoder = KnownMap(VoxelFourierVolume(torch.as_tensor(np.asarray(volume, dtype=np.float64)), voxel), pixel)
    dataset = ParticleDataset(truth, box=box)
    batches = [dataset.__getitems__(list(range(s, min(s + 256, count)))) for s in range(0, count, 256)]
    std = torch.cat([b["image"] for b in batches]).std().item()
    batches = [(b["image"] / std, b["ctf"]) for b in batches]
    true_rotations = euler_to_matrix(truth.euler_angles_degrees).float()
    true_px = torch.as_tensor(truth.origins_angstrom / pixel).float()
    generator = torch.Generator().manual_seed(args.seed)
    good = torch.rand(count, generator=generator) < args.good_fraction
    axes = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    angles = torch.randn(count, generator=generator).abs() * math.radians(10.0)
    start = true_rotations @ roma.rotvec_to_rotmat(axes * angles[:, None])
    start[~good] = random_rotations(int((~good).sum()), generator).float()
    start_px = true_px + torch.randn(count, 2, generator=generator)
    start_px[~good] = 0.0
    config = build(box=box, pixel_size_angstrom=pixel, input_box=box, input_pixel_size_angstrom=pixel, epochs=1,
                   amortized_poses="refined", search_refine_tie_fraction=args.tie_fraction,
                   search_refine_edge_px=args.edge_px)
    learner = CryoAILearner(config)
    learner.decoder = decoder
    disk = learner.disk(config.nyquist_radius_px)
    images, ctf = batches[0]
    predicted = render(decoder, true_rotations[:len(images)], true_px[:len(images)], learner.ctf_values(ctf, disk), disk)
    targets = learner.spectra(images, disk)
    decoder.scale = float((disk.weights * (predicted.conj() * targets).real).sum()
                          / (disk.weights * predicted.abs() ** 2).sum())
    grid = learner.cached_map(disk)
    search = config.search
    for mode in args.modes:
        generator = torch.Generator().manual_seed(0)
        rotations, origins_px, first = [], [], 0
        cpu = time.process_time()
        with torch.no_grad():
            for images, ctf in batches:
                r0, o0 = start[first:first + len(images)], start_px[first:first + len(images)]
                first += len(images)
                if mode == "export":
                    r, o = learner.refine_poses(images, ctf, r0, o0 * pixel, generator)
                    o = o / pixel
                else:
                    values, targets = learner.ctf_values(ctf, disk), learner.spectra(images, disk)
                    local = learner.search.refine(grid, targets, values, disk, r0, o0, search.local_rotation_degrees,
                                                  search.local_shift_px, search.refine_steps)
                    found = learner.search.search(grid, targets, values, disk, generator)
                    better = found.distances < local.distances
                    r = torch.where(better[:, None, None], found.rotations, local.rotations)
                    o = torch.where(better[:, None], found.origins_px, local.origins_px)
                rotations.append(r)
                origins_px.append(o)
        seconds = time.process_time() - cpu
        errors = torch.rad2deg(roma.rotmat_geodesic_distance(torch.cat(rotations).double(), true_rotations.double()))
        shifts = torch.linalg.vector_norm(torch.cat(origins_px).double() - true_px.double(), dim=-1)
        line = {"benchmark": "refine_bed", "folder": args.folder, "particles": count, "box": box, "mode": mode,
                "images_per_cpu_s": round(count / seconds, 1), "median_degrees": round(errors.median().item(), 2),
                "within_5_degrees": round((errors <= 5).double().mean().item(), 4),
                "within_20_degrees": round((errors <= 20).double().mean().item(), 4),
                "within_20_degrees_random_starts": round((errors[~good] <= 20).double().mean().item(), 4),
                "median_shift_error_px": round(shifts.median().item(), 3)}
        if mode == "export":
            line.update(tie_fraction=args.tie_fraction, edge_px=args.edge_px)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
