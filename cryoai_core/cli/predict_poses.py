"""Predict the poses of any particle set with the encoder of a trained run (no retraining).

The particles are Fourier cropped to the training grid of the run (same pixel size after cropping);
each image gets the encoder's pose (with the symmetrized loss, the better of the image and its 180°
rotation, judged by the trained map). Writes a RELION 3.1 star with angles and origins in Å.

Example:
    cryoai predict-poses --checkpoint run1/checkpoint.pt new_particles.star -o new_particles_poses.star
"""
import logging
import os

from cryoai_core.cli import CommandError

logger = logging.getLogger(__name__)


def add_args(parser):
    parser.add_argument("particles", metavar="PARTICLES", help="RELION .star or cryoSPARC .cs file")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a cryoai abinit run")
    parser.add_argument("-o", "--output", required=True, help="output star file")
    parser.add_argument("--root", default=None, help="folder that image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
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


def main(args):
    from cryoai_core.cli.abinit import resolve_device
    from cryoai_core.io.dataset import ParticleDataset
    from cryoai_core.io.readers import read_particles
    from cryoai_core.io.star import require_ctf, write_star
    from cryoai_core.train.checkpoint import config_from_checkpoint, read_checkpoint, restore_learner
    from cryoai_core.train.export import predict_all_poses
    from cryoai_core.train.learner import CryoAILearner

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    state = read_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    config = config_from_checkpoint(state, device=device)
    table = read_particles(args.particles, root=args.root)
    require_ctf(table, args.particles)
    if len(table) == 0:
        raise CommandError(f"{args.particles} holds no particles")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.access(folder, os.W_OK):
        raise CommandError(f"cannot write {args.output}: {folder} is not a writable folder")
    dataset = ParticleDataset(table, box=matching_box(config, table), invert_contrast=config.invert_contrast)
    learner = CryoAILearner(config)
    restore_learner(learner, state, with_optimizers=False)
    learner.to(device)
    std = state["progress"]["normalization"][1]
    euler, origins, _ = predict_all_poses(learner, dataset, std, batch_size=args.batch_size, device=device,
                                          progress_bar=not args.no_progress)
    write_star(args.output, table.with_poses(euler, origins))
    logger.info("wrote the poses of %d particles to %s", len(table), args.output)
    print(f"poses: {args.output}")
    return 0
