"""Reconstruct a map from particles with known poses by direct Fourier inversion (no network).

Reads a RELION .star (or cryoSPARC .cs) whose particles carry poses (rlnAngleRot/Tilt/Psi, origins) and
CTF, inserts every image's transform into a 3D Fourier grid with its CTF, and writes the Wiener-filtered
map of all particles (OUTDIR/volume_backprojected.mrc) with the half maps (OUTDIR/half1.mrc, half2.mrc),
their FSC (fsc_halves.png) and the FSC=0.143 resolution (resolution.json). The halves are the file's
rlnRandomSubset when it has one, else a random 50/50 split. The poses of each half are first refined
against that half's own map (--half-maps-rounds, see cryoai_core/gold_standard.py), so that poses aligned on
a map of all particles do not make the halves agree on noise; poses already refined apart (RELION's,
with their rlnRandomSubset) are backprojected as they are with --half-maps-rounds 0.
Maps have the particle box and pixel size; --box reconstructs at a smaller box (Fourier cropped
particles) and pads the maps back.

Example:
    cryoai backproject run1/particles.star -o run1/backprojection --box 64
"""
import logging
import os

from cryoai_core.cli import CommandError
from cryoai_core.train.config import HalfMapConfig

logger = logging.getLogger(__name__)


def add_args(parser):
    parser.add_argument("particles", metavar="PARTICLES", help="RELION .star or cryoSPARC .cs file with poses")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (created if needed)")
    parser.add_argument("--root", default=None, help="folder that image paths are relative to "
                                                     "(default: found next to the particle file)")
    parser.add_argument("--box", type=int, default=None,
                        help="reconstruction box in pixels, even, at most the particle box (default: the particle box)")
    parser.add_argument("--invert-contrast", action="store_true",
                        help="invert the images (use when particles are dark on a bright background)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the half-map split when the file has no "
                                                            "rlnRandomSubset (default 0)")
    parser.add_argument("--half-maps-rounds", type=int, default=HalfMapConfig().rounds,
                        help="rounds of refinement of each half's poses against its own map; 0 backprojects the "
                             f"poses as they are (default {HalfMapConfig().rounds})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args):
    import dataclasses

    from cryoai_core.gold_standard import gold_standard_half_maps
    from cryoai_core.io.dataset import ParticleDataset
    from cryoai_core.io.readers import read_particles
    from cryoai_core.reconstruct import halves_of, write_half_maps

    if args.half_maps_rounds < 0:
        raise CommandError(f"--half-maps-rounds must be ≥ 0, got {args.half_maps_rounds}")
    table = read_particles(args.particles, root=args.root)
    if not table.has_poses:
        raise CommandError(f"{args.particles} has no poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi); "
                           "backprojection needs known poses")
    if len(table) < 2:
        raise CommandError(f"{args.particles} holds {len(table)} particle; half maps need at least 2")
    box = args.box or table.box
    if box % 2 or box < 8 or box > table.box:
        raise CommandError(f"--box must be even, at least 8 and at most the particle box ({table.box}); got {box}")
    if table.ctf is None:
        logger.warning("%s has no CTF parameters: backprojecting without CTF correction", args.particles)
    try:
        os.makedirs(args.outdir, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create the output folder {args.outdir}: {error.strerror}") from error
    dataset = ParticleDataset(table, box=box, invert_contrast=args.invert_contrast)
    config = dataclasses.replace(HalfMapConfig(), rounds=args.half_maps_rounds)
    result = gold_standard_half_maps(dataset, table.euler_angles_degrees, table.origins_angstrom, seed=args.seed,
                                     config=config, halves=halves_of(table, args.seed), progress=not args.no_progress)
    paths = write_half_maps(result, args.outdir, table.box, table.pixel_size_angstrom, args.seed)
    print(f"map: {paths['volume_backprojected']}\nhalf maps: {paths['half1']}, {paths['half2']}\n"
          f"FSC=0.143 resolution: {result.resolution_angstrom:.2f} Å ({paths['resolution']})"
          + ("" if result.established else f"\n{result.warning}"))
    return 0
