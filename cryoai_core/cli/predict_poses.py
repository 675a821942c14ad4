"""Predict the poses of any particle set with the encoder of a trained run (no retraining).

The particles are Fourier cropped to the training grid of the run (same pixel size after cropping);
each image gets the encoder's pose (with the symmetrized loss, the better of the image and its 180°
rotation, judged by the trained map), refined against the map with ``--refine``. Writes a RELION 3.1
star with angles, origins in Å and the per-particle score (``rlnCryoaiScore``, see train/score.py). The
origins are those against the run's volume.mrc, whose density the export centred in its box.

Example:
    cryoai predict-poses --checkpoint run1/checkpoint.pt new_particles.star -o new_particles_poses.star
"""
import logging
import os

from cryoai_core.cli import CommandError
from cryoai_core.cli.checks import check_number

logger = logging.getLogger(__name__)


def add_args(parser):
    parser.add_argument("particles", metavar="PARTICLES", help="RELION .star or cryoSPARC .cs file")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a cryoai abinit run")
    parser.add_argument("-o", "--output", required=True, help="output star file")
    parser.add_argument("--root", default=None, help="folder that image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    refine = parser.add_mutually_exclusive_group()
    refine.add_argument("--refine", dest="refine", action="store_true", default=None,
                        help="refine the encoder's poses against the trained map (local refinement and a global "
                             "search; the lower residual wins); default: as the run trained (--amortized-poses)")
    refine.add_argument("--no-refine", dest="refine", action="store_false",
                        help="the encoder's own poses")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def matching_box(config, table) -> int:
    """The even box that brings ``table``'s particles to the run's training pixel size."""
    box = table.box * table.pixel_size_angstrom / config.pixel_size_angstrom
    rounded = int(round(box))
    if abs(box - rounded) > 0.01 * box or rounded % 2 or rounded > table.box or rounded < 16:
        raise CommandError(
            f"the particles ({table.box} px of {table.pixel_size_angstrom:.4g} Å) cannot be Fourier cropped to the "
            f"run's training grid ({config.box} px of {config.pixel_size_angstrom:.4g} Å)")
    if rounded != config.box:
        raise CommandError(f"the particles span {table.box * table.pixel_size_angstrom:.1f} Å but the run was "
                           f"trained on boxes of {config.box * config.pixel_size_angstrom:.1f} Å")
    return rounded


def validate_predict_poses(args) -> tuple:
    """Check every option and input without writing anything; return ``(state, config, table, box, device)``."""
    from cryoai_core.cli.abinit import resolve_device
    from cryoai_core.allocator import release_freed_memory
    from cryoai_core.ctf_ranges import check_ctf_parameters
    from cryoai_core.io.content_checks import check_particle_images
    from cryoai_core.io.readers import read_particles
    from cryoai_core.io.star import require_ctf
    from cryoai_core.train.checkpoint import config_from_checkpoint, read_checkpoint

    check_number("--batch-size", args.batch_size, 1, strict=False)
    if args.root is not None and not os.path.isdir(args.root):
        raise CommandError(f"--root {args.root}: not a folder")
    if os.path.isdir(args.output):
        raise CommandError(f"-o/--output {args.output} is a folder; give the name of the star file to write")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise CommandError(f"-o/--output {args.output}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write {args.output}: {folder} is not a writable folder")
    device = resolve_device(args.device)
    state = read_checkpoint(args.checkpoint)
    # The training particles' pose memory (~45 B per particle) is of no use here: released before the table is read.
    state["learner"]["memory"] = None
    config = config_from_checkpoint(state, device=device)
    normalization = state["progress"].get("normalization")
    if not (isinstance(normalization, (list, tuple)) and len(normalization) == 2 and normalization[1] > 0):
        raise CommandError(f"{args.checkpoint} is not a complete cryoAI checkpoint: missing the image normalization")
    table = read_particles(args.particles, root=args.root, poses=False)  # the predicted poses replace them
    require_ctf(table, args.particles)
    if len(table) == 0:
        raise CommandError(f"{args.particles} holds no particles")
    check_ctf_parameters(table.ctf, args.particles)
    box = matching_box(config, table)
    check_particle_images(table, args.particles)
    release_freed_memory()  # the checks' temporaries, kept by the allocator (cryoai_core/allocator.py)
    return state, config, table, box, device


def main(args):
    from cryoai_core.io.dataset import ParticleDataset
    from cryoai_core.io.star import write_star
    from cryoai_core.train.checkpoint import restore_learner
    from cryoai_core.train.export import map_centre_angstrom, predict_and_score
    from cryoai_core.train.learner import CryoAILearner

    state, config, table, box, device = validate_predict_poses(args)
    dataset = ParticleDataset(table, box=box, invert_contrast=config.invert_contrast)
    learner = CryoAILearner(config)
    restore_learner(learner, state, with_optimizers=False)
    learner.to(device)
    std = state["progress"]["normalization"][1]
    with predict_and_score(learner, dataset, std, batch_size=args.batch_size, device=device,
                           progress_bar=not args.no_progress, refine=args.refine,
                           folder=os.path.dirname(os.path.abspath(args.output)),
                           centre_angstrom=map_centre_angstrom(learner, std),
                           particle_origin_px=state["progress"].get("particle_origin_px", (0.0, 0.0))) as prediction:
        write_star(args.output, table, poses=prediction.chunks())
    logger.info("wrote the poses of %d particles to %s", len(table), args.output)
    print(f"poses: {args.output}")
    return 0
