"""Ab initio reconstruction with amortized pose inference (cryoAI) from particles with unknown poses.

Reads a RELION 3.0/3.1 star (or a cryoSPARC .cs) with CTF parameters, trains the pose encoder and
FourierNet, and writes OUTDIR/volume.mrc (input box and pixel size), OUTDIR/particles.star (every
particle with its predicted pose, RELION convention, ready for refinement), OUTDIR/checkpoint.pt,
OUTDIR/config.yaml, OUTDIR/metrics.csv, OUTDIR/run.log and pictures (loss.png, poses.png, slices.png).
A stopped run (Ctrl-C, SIGTERM, time limit of a queue) keeps its checkpoint: add --resume to continue.

Example:
    cryoai abinit particles.star -o run1 --box 64 --max-minutes 60
"""

import logging
import os

from cryoai_core.cli import CommandError
from cryoai_core.train.config import AMORTIZED_POSES, TrainConfig

logger = logging.getLogger(__name__)

MIN_PARTICLES = 10


def _default(name: str):
    """The default of a :class:`TrainConfig` field (the one source of defaults)."""
    return TrainConfig.__dataclass_fields__[name].default


def add_args(parser):
    parser.add_argument("particles", metavar="PARTICLES", help="RELION .star or cryoSPARC .cs file")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (created if needed)")
    parser.add_argument("--root", default=None, help="folder that image paths are relative to "
                                                     "(default: found next to the particle file)")
    parser.add_argument("--box", type=int, default=None,
                        help="training box in pixels, even; particles are Fourier cropped to it "
                             "(default: the particle box, or 64 if it is larger)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the data set")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget of the training, minutes (default 30 when --epochs is absent)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--lr-encoder", type=float, default=1e-3, help="encoder learning rate (default 1e-3)")
    parser.add_argument("--lr-decoder", type=float, default=1e-3, help="FourierNet learning rate (default 1e-3)")
    parser.add_argument("--no-symmetric-loss", action="store_true",
                        help="plain L2 loss instead of the symmetrized loss (paper ablation)")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="skip the pose-search bootstrap: pure amortized training from the start")
    parser.add_argument("--amortized-poses", choices=AMORTIZED_POSES, default=_default("amortized_poses"),
                        help="poses of the amortized phase: 'refined' (encoder pose refined against the map, "
                             "with a global search every few steps) or 'encoder' (the paper) "
                             f"(default {_default('amortized_poses')})")
    parser.add_argument("--search-max-shift-fraction", type=float, default=_default("search_max_shift_fraction"),
                        help="particles are searched up to this fraction of the box off centre, per axis "
                             f"(default {_default('search_max_shift_fraction')})")
    parser.add_argument("--mask-radius-angstrom", type=float, default=None,
                        help="radius of the circular mask applied to the particles, Å (default: 90%% of half the box)")
    parser.add_argument("--invert-contrast", action="store_true",
                        help="invert the images (use when particles are dark on a bright background)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=int, default=0, help="image-reading processes (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0,
                        help="minutes between checkpoints (default 5)")
    parser.add_argument("--resume", action="store_true", help="continue the run stored in OUTDIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

def resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device {name}: {error}") from error
    return name

def prepare_outdir(outdir: str, resume: bool) -> None:
    from cryoai_core.train.checkpoint import CHECKPOINT_NAME

    checkpoint = os.path.join(outdir, CHECKPOINT_NAME)
    if resume and not os.path.isfile(checkpoint):
        raise CommandError(f"--resume: {outdir} holds no checkpoint ({CHECKPOINT_NAME})")
    if not resume and os.path.isfile(checkpoint):
        raise CommandError(f"{outdir} already holds a run; add --resume to continue it or choose another folder")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create the output folder {outdir}: {error.strerror}") from error
    if not os.access(outdir, os.W_OK):
        raise CommandError(f"the output folder {outdir} is not writable")

def add_log_file(outdir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(outdir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler

def build_config(args, table):
    box = args.box or min(table.box, 64)
    max_minutes = args.max_minutes if (args.max_minutes or args.epochs) else 30.0
    return TrainConfig(
        box=box, pixel_size_angstrom=table.pixel_size_angstrom * table.box / box, input_box=table.box,
        input_pixel_size_angstrom=table.pixel_size_angstrom, epochs=args.epochs, max_minutes=max_minutes,
        batch_size=args.batch_size, lr_encoder=args.lr_encoder, lr_decoder=args.lr_decoder,
        symmetric_loss=not args.no_symmetric_loss, bootstrap=not args.no_bootstrap,
        mask_radius_angstrom=args.mask_radius_angstrom, invert_contrast=args.invert_contrast, seed=args.seed,
        device=resolve_device(args.device), num_workers=args.num_workers,
        checkpoint_minutes=args.checkpoint_minutes, amortized_poses=args.amortized_poses,
        search_max_shift_fraction=args.search_max_shift_fraction)

def main(args):
    import torch

    from cryoai_core.io.dataset import ParticleDataset, normalization_stats
    from cryoai_core.io.readers import read_particles
    from cryoai_core.io.star import require_ctf
    from cryoai_core.provenance import save_config
    from cryoai_core.train.checkpoint import config_from_checkpoint, read_checkpoint
    from cryoai_core.train.export import write_outputs
    from cryoai_core.train.learner import CryoAILearner
    from cryoai_core.train.trainer import Trainer, TrainingInterrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    table = read_particles(args.particles, root=args.root)
    require_ctf(table, args.particles)
    if len(table) < MIN_PARTICLES:
        raise CommandError(f"{args.particles} holds {len(table)} particles; ab initio needs at least {MIN_PARTICLES}")
    if args.box is not None and (args.box % 2 or args.box < 16 or args.box > table.box):
        raise CommandError(f"--box must be even, at least 16 and at most the particle box ({table.box}); "
                           f"got {args.box}")
    prepare_outdir(args.outdir, args.resume)
    handler = add_log_file(args.outdir)
    try:
        if args.resume:
            state = read_checkpoint(os.path.join(args.outdir, "checkpoint.pt"))
            config = config_from_checkpoint(state, epochs=args.epochs, max_minutes=args.max_minutes,
                                            device=resolve_device(args.device), num_workers=args.num_workers)
            if (config.input_box, config.input_pixel_size_angstrom) != (table.box, table.pixel_size_angstrom):
                raise CommandError("--resume: the particles differ in box or pixel size from the stored run")
        else:
            config = build_config(args, table)
        save_config(config, os.path.join(args.outdir, "config.yaml"), particles=os.path.abspath(args.particles),
                    num_particles=len(table))
        logger.info("cryoAI ab initio: %d particles, box %d -> %d, %.3f Å/px, device %s", len(table), table.box,
                    config.box, config.pixel_size_angstrom, config.device)
        torch.manual_seed(config.seed)
        dataset = ParticleDataset(table, box=config.box, invert_contrast=config.invert_contrast)
        normalization = normalization_stats(dataset, generator=torch.Generator().manual_seed(config.seed))
        learner = CryoAILearner(config).to(config.device)
        trainer = Trainer(learner, dataset, args.outdir, normalization, progress_bar=not args.no_progress)
        if args.resume:
            trainer.resume()
        try:
            trainer.run()
        except TrainingInterrupted as stop:
            logger.warning("%s: checkpoint saved at step %d; continue with --resume", stop, learner.steps)
            return 130
        paths = write_outputs(learner, dataset, table, args.outdir, trainer.normalization[1],
                              device=config.device, progress_bar=not args.no_progress)
        print(f"map: {paths['volume']}\nposes: {paths['particles']}\nrun folder: {args.outdir}")
        return 0
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()

