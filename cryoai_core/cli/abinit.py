"""Ab initio reconstruction with amortized pose inference (cryoAI) from particles with unknown poses.

Reads a RELION 3.0/3.1 star (or a cryoSPARC .cs) with CTF parameters, trains the pose encoder and
FourierNet, and writes OUTDIR/volume.mrc (input box and pixel size), OUTDIR/particles.star (every
particle with its predicted pose, RELION convention, ready for refinement, and its half in
rlnRandomSubset), gold-standard half maps of that random 50/50 split, each half's poses refined against
its own map (OUTDIR/half1.mrc, half2.mrc, volume_backprojected.mrc, fsc_halves.png and the FSC=0.143
resolution in resolution.json; --no-half-maps skips them), OUTDIR/checkpoint.pt,
OUTDIR/config.yaml, OUTDIR/metrics.csv, OUTDIR/run.log and pictures (loss.png, poses.png, slices.png).
A stopped run (Ctrl-C, SIGTERM, time limit of a queue) keeps its checkpoint: add --resume to continue.

Example:
    cryoai abinit particles.star -o run1 --box 64 --max-minutes 60
"""

import logging
import os

from cryoai_core.cli import CommandError
from cryoai_core.cli.checks import check_number, check_writable_folder
from cryoai_core.train import config_flags
from cryoai_core.train.config import DEFAULT_MAX_BOX, DEFAULT_MAX_MINUTES, MIN_BOX, build

logger = logging.getLogger(__name__)

MIN_PARTICLES = 10


def add_args(parser):
    parser.add_argument("particles", metavar="PARTICLES", help="RELION .star or cryoSPARC .cs file")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (created if needed)")
    parser.add_argument("--root", default=None, help="folder that image paths are relative to "
                                                     "(default: found next to the particle file)")
    parser.add_argument("--box", type=int, default=None,
                        help="training box in pixels, even; particles are Fourier cropped to it "
                             f"(default: the particle box, or {DEFAULT_MAX_BOX} if it is larger)")
    config_flags.add_arguments(parser)
    parser.add_argument("--no-half-maps", action="store_true",
                        help="skip the half maps and gold-standard resolution computed after training")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--gpus", default=None,
                        help="GPUs of this node to train on, e.g. 0,1,2,3 (numbered within CUDA_VISIBLE_DEVICES); "
                             "several start one data-parallel process per GPU through torch.distributed.run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue the run stored in OUTDIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

def resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device {name}: not a device name (use auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise CommandError(f"--device {name}: only cpu and cuda devices are supported")
    return name


RUN_OUTPUTS = ("checkpoint.pt", "metrics.csv", "volume.mrc", "particles.star", "config.yaml", "run.log")
"""Files whose presence marks a folder as holding a run."""


def check_outdir(outdir: str, resume: bool) -> None:
    """A new run needs a folder free of earlier outputs; ``--resume`` needs the earlier checkpoint."""
    from cryoai_core.train.checkpoint import CHECKPOINT_NAME

    check_writable_folder(outdir, "-o/--outdir")
    if resume:
        if not os.path.isfile(os.path.join(outdir, CHECKPOINT_NAME)):
            raise CommandError(f"--resume: {outdir} holds no checkpoint ({CHECKPOINT_NAME})")
        return
    found = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(outdir, name))]
    if CHECKPOINT_NAME in found:
        raise CommandError(f"{outdir} already holds a run; add --resume to continue it or choose another folder")
    if found:
        raise CommandError(f"{outdir} holds outputs of an earlier run ({', '.join(found)}); choose another folder "
                           "or remove them")


def config_values(args) -> dict:
    """The config settings of the options (flat names), with the default budget when none is given."""
    values = config_flags.values_from_args(args)
    if values["epochs"] is None and values["max_minutes"] is None:
        values["max_minutes"] = DEFAULT_MAX_MINUTES
    return values


def check_options(args) -> None:
    """Every option's own range (no file is read): the config's own checks, then the other options."""
    for name, value in config_flags.values_from_args(args).items():
        if isinstance(value, float):
            check_number(f"--{name.replace('_', '-')}", value)
    errors = config_flags.check(**config_values(args))
    if errors:
        raise CommandError(errors[0])
    check_number("--threads", args.threads, 1, strict=False)
    if args.root is not None and not os.path.isdir(args.root):
        raise CommandError(f"--root {args.root}: not a folder")


def build_config(args, table, device: str):
    box = args.box or min(table.box, DEFAULT_MAX_BOX)
    return build(box=box, pixel_size_angstrom=table.pixel_size_angstrom * table.box / box, input_box=table.box,
                 input_pixel_size_angstrom=table.pixel_size_angstrom, device=device, **config_values(args))


def validate_abinit(args) -> tuple:
    """Check every option and input without writing anything; return ``(table, config, checkpoint or None)``."""
    from cryoai_core.allocator import release_freed_memory
    from cryoai_core.ctf_ranges import check_ctf_parameters
    from cryoai_core.io.content_checks import check_particle_images
    from cryoai_core.io.readers import read_particles
    from cryoai_core.io.star import require_ctf
    from cryoai_core.train.checkpoint import CHECKPOINT_NAME, read_checkpoint
    from cryoai_core.train.resume import check_resume

    check_options(args)
    device = resolve_device(args.device)
    check_outdir(args.outdir, args.resume)
    table = read_particles(args.particles, root=args.root, poses=False)
    require_ctf(table, args.particles)
    if len(table) < MIN_PARTICLES:
        raise CommandError(f"{args.particles} holds {len(table)} particles; ab initio needs at least {MIN_PARTICLES}")
    check_ctf_parameters(table.ctf, args.particles)
    if args.box is not None and (args.box % 2 or args.box < MIN_BOX or args.box > table.box):
        raise CommandError(f"--box must be even, at least {MIN_BOX} and at most the particle box ({table.box}); "
                           f"got {args.box}")
    try:
        config = build_config(args, table, device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    state = None
    if args.resume:
        state = read_checkpoint(os.path.join(args.outdir, CHECKPOINT_NAME))
        check_resume(state["config"], config, args.outdir)
    check_particle_images(table, args.particles)
    release_freed_memory()  # the checks' temporaries, kept by the allocator (cryoai_core/allocator.py)
    return table, config, state


def prepare_outdir(outdir: str) -> None:
    os.makedirs(outdir, exist_ok=True)


def add_log_file(outdir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(outdir, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler


def half_maps(dataset, particles_star: str, config, outdir: str, progress: bool = True):
    """Gold-standard half maps of the training particles (``dataset``, no poses of its own) on the split of
    ``particles_star`` (``rlnRandomSubset``), their poses, read from it, refined apart
    (:mod:`cryoai_core.gold_standard`) at the training box; write them at the input box
    (:func:`cryoai_core.reconstruct.write_half_maps`); return the :class:`~cryoai_core.reconstruct.HalfMapResult`.

    Only the pose and split columns of the star are read (:func:`~cryoai_core.io.star.read_star_poses`): the
    training table is in memory already."""
    from cryoai_core.gold_standard import gold_standard_half_maps
    from cryoai_core.io.star import read_star_poses
    from cryoai_core.reconstruct import SUBSET_COLUMN, halves_from, write_half_maps

    table = dataset.table
    angles, origins, extra = read_star_poses(particles_star, table.pixel_size_angstrom, (SUBSET_COLUMN,))
    if len(angles) != len(table):
        raise ValueError(f"{particles_star} lists {len(angles)} particles, the run trained on {len(table)}")
    halves = halves_from(extra.get(SUBSET_COLUMN), len(angles), config.seed)
    result = gold_standard_half_maps(dataset, angles, origins, seed=config.seed, config=config.half_maps,
                                     search_config=config.search, halves=halves, progress=progress)
    write_half_maps(result, outdir, table.box, table.pixel_size_angstrom, config.seed)
    return result


def main(args):
    from cryoai_core.train import distributed
    from cryoai_core.train.launch import command_line, parse_gpus, relaunch

    try:
        gpus = parse_gpus(args.gpus)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if gpus:
        if args.device not in ("auto", "cuda"):
            raise CommandError(f"--gpus runs on CUDA; it cannot be combined with --device {args.device}")
        args.device = resolve_device("cuda")
        if distributed.launched_world_size() == 1:
            if len(gpus) > 1:
                return relaunch(command_line("abinit", add_args, args), len(gpus))
            args.device = f"cuda:{gpus[0]}"
            gpus = []
    if distributed.launched_world_size() > 1:
        cluster, args.device = distributed.start(resolve_device(args.device), gpus)
    else:
        cluster = distributed.Cluster()
    try:
        status = _train(args, cluster)
    except BaseException:
        distributed.stop(failed=True)
        raise
    distributed.stop()
    return status


def _train(args, cluster):
    import contextlib
    import dataclasses

    import torch

    from cryoai_core.errors import Interrupted
    from cryoai_core.interrupts import DeferredInterrupts
    from cryoai_core.io.atomic import rollback_on_failure
    from cryoai_core.io.dataset import ParticleDataset, normalization_stats
    from cryoai_core.provenance import save_config
    from cryoai_core.recentre import mean_particle_origin_px
    from cryoai_core.train import distributed
    from cryoai_core.train.checkpoint import CHECKPOINT_NAME
    from cryoai_core.train.export import write_outputs
    from cryoai_core.train.learner import CryoAILearner
    from cryoai_core.train.trainer import Trainer, TrainingInterrupted

    table, config, _ = validate_abinit(args)
    cluster.require_same({"config": dict(dataclasses.asdict(config), device=None), "particles": len(table)})
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    dataset = ParticleDataset(table, box=config.box, invert_contrast=config.invert_contrast)
    normalization = normalization_stats(dataset, generator=torch.Generator().manual_seed(config.seed))
    particle_origin_px = mean_particle_origin_px(dataset, generator=torch.Generator().manual_seed(config.seed)) \
        if config.search.centre_particles else (0.0, 0.0)
    checkpoint = os.path.join(args.outdir, CHECKPOINT_NAME)
    # A run that fails before its first checkpoint leaves nothing behind; later, the checkpoint is kept.
    # Under torch.distributed, rank 0 alone writes (every rank has checked the folder before).
    writer = cluster.is_writer
    with rollback_on_failure(args.outdir, keep=lambda: os.path.exists(checkpoint)) if writer \
            else contextlib.nullcontext():
        if writer:
            prepare_outdir(args.outdir)
        handler = add_log_file(args.outdir) if writer else logging.NullHandler()
        try:
            logger.info("cryoAI ab initio: %d particles, box %d -> %d, %.3f Å/px, device %s", len(table),
                        table.box, config.box, config.pixel_size_angstrom, config.device)
            learner = CryoAILearner(config).to(config.device)
            trainer = Trainer(learner, dataset, args.outdir, normalization, progress_bar=not args.no_progress,
                              cluster=cluster, particle_origin_px=particle_origin_px)
            if args.resume:
                trainer.resume()
            logger.info("particles' mean origin (%.1f, %.1f) Å: training sees the images moved by it, so that the "
                        "particles sit at the box centre on average",
                        *(value * config.pixel_size_angstrom for value in trainer.particle_origin_px))
            distributed.wrap(learner, cluster)
            if writer:
                save_config(config, os.path.join(args.outdir, "config.yaml"),
                            particles=os.path.abspath(args.particles), num_particles=len(table),
                            ranks=cluster.world_size)
            try:
                trainer.run()
            except TrainingInterrupted as stop:
                raise Interrupted(f"{stop}: checkpoint saved at step {learner.steps}; continue with the same "
                                  "command and --resume") from None
            with DeferredInterrupts("the export") as deferred:
                paths = write_outputs(learner, dataset, table, args.outdir, trainer.normalization[1],
                                      device=config.device, progress_bar=not args.no_progress, cluster=cluster,
                                      particle_origin_px=trainer.particle_origin_px)
            resolution = None
            if writer and not args.no_half_maps:
                resolution = half_maps(dataset, paths["particles"], config, args.outdir, progress=not args.no_progress)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    if writer:
        print(f"map: {paths['volume']}\nposes: {paths['particles']}")
        if resolution is not None:
            print(f"half maps: FSC=0.143 resolution {resolution.resolution_angstrom:.2f} Å (resolution.json, "
                  "fsc_halves.png)" + ("" if resolution.established else f"; {resolution.warning}"))
        print(f"run folder: {args.outdir}")
    if deferred.received:
        raise Interrupted(f"received {deferred.received} during the export; the export was finished first, "
                          "so the outputs are complete")
    return 0
