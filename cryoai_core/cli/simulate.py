"""Simulate particle images with known poses from a map (ground truth for tests and benchmarks).

Writes OUTDIR/particles.mrcs, OUTDIR/particles.star (RELION 3.1 with the true poses, angles in degrees
and origins in Å, RELION convention), OUTDIR/reference.mrc (the map on the particle grid) and
OUTDIR/simulation.yaml. Without MAP the bundled adenylate kinase map (PDB 4AKE, 64³, 1.5 Å) is used.

Real distributions: --poses-from draws poses and origins (with replacement) from a RELION star, a
cryoSPARC .cs or a cryoDRGN pose pkl, origins scaled to the particle box as fractions of the box side;
--defocus-from draws defocus U/V, angle and phase shift from the same kinds of file or a cryoDRGN CTF
pkl. --junk-fraction replaces that fraction of the particles by pure noise at the particles' noise level,
flagged 1 in the star column rlnCryoaiIsJunk.

Examples:
    cryoai simulate -o sim -n 20000 --box 32 --pixel-size 3 --shift-sigma 3 --snr-db -10 --seed 1
    cryoai simulate map.mrc -o sim -n 30000 --box 64 --pixel-size 8 --snr 0.05 \
        --poses-from poses.pkl --defocus-from ctf.pkl --junk-fraction 0.15
"""
import math
import os

from cryoai_core.cli import CommandError
from cryoai_core.cli.checks import check_number, check_writable_folder

BUILTIN_MAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "4ake_L64_px1.5.mrc")
"""The bundled map: E. coli adenylate kinase, open state (PDB 4AKE), 64³ voxels of 1.5 Å."""


def add_args(parser):
    parser.add_argument("map", nargs="?", default=None, metavar="MAP.mrc",
                        help="map to project (default: the bundled 4AKE map)")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("-n", "--num-particles", type=int, required=True, help="number of particles")
    parser.add_argument("--box", type=int, default=None, help="particle box in pixels (default: the map's)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="particle pixel size in Å (default: the map's voxel size)")
    parser.add_argument("--shift-sigma", type=float, default=0.0,
                        help="standard deviation of the particle origins per axis, Å (default 0)")
    parser.add_argument("--no-ctf", action="store_true", help="do not apply a CTF")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=float, default=None,
                       help="signal-to-noise ratio as a variance ratio, e.g. 0.1 (default: no noise)")
    noise.add_argument("--snr-db", type=float, default=None, help="signal-to-noise ratio in dB, e.g. -10")
    ctf = parser.add_argument_group("CTF")
    ctf.add_argument("--defocus", type=float, default=15000.0,
                     help="median defocus in Å (log-normal; default 15000)")
    ctf.add_argument("--defocus-log-sigma", type=float, default=0.2,
                     help="standard deviation of ln(defocus) (default 0.2)")
    ctf.add_argument("--astigmatism", type=float, default=300.0,
                     help="standard deviation of defocusU - defocusV in Å (default 300)")
    ctf.add_argument("--voltage", type=float, default=300.0, help="acceleration voltage, kV (default 300)")
    ctf.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm (default 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    ctf.add_argument("--bfactor", type=float, default=0.0, help="CTF envelope B-factor, Å² (default 0)")
    real = parser.add_argument_group("real distributions and junk")
    real.add_argument("--poses-from", metavar="TABLE", default=None,
                      help="draw poses and shifts from a RELION .star, cryoSPARC .cs or cryoDRGN pose .pkl")
    real.add_argument("--defocus-from", metavar="TABLE", default=None,
                      help="draw defocus from a RELION .star, cryoSPARC .cs or cryoDRGN CTF .pkl")
    real.add_argument("--junk-fraction", type=float, default=0.0,
                      help="fraction of pure-noise (junk) images, flagged in the star file (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def validate_simulate(args) -> tuple:
    """Check every option and the map without writing anything; return ``(config, volume, voxel_size)``."""
    from cryoai_core.ctf_ranges import BFACTOR_ANGSTROM2_LIMIT, DEFOCUS_ANGSTROM_LIMIT, check_scalar_ctf
    from cryoai_core.io.content_checks import check_map
    from cryoai_core.io.mrc import read_mrc
    from cryoai_core.simulate import SimulationConfig

    check_number("-n/--num-particles", args.num_particles, 1, strict=False)
    check_number("--pixel-size", args.pixel_size, 0)
    check_number("--shift-sigma", args.shift_sigma, 0, strict=False)
    check_number("--snr", args.snr, 0)
    check_number("--snr-db", args.snr_db)
    check_number("--defocus", args.defocus, 0)
    check_number("--defocus-log-sigma", args.defocus_log_sigma, 0, strict=False)
    check_number("--astigmatism", args.astigmatism, 0, strict=False)
    check_number("--bfactor", args.bfactor, 0, strict=False)
    if args.bfactor >= BFACTOR_ANGSTROM2_LIMIT:
        raise CommandError(f"--bfactor {args.bfactor:g} Å² would erase every frequency; it must stay below "
                           f"{BFACTOR_ANGSTROM2_LIMIT:g}")
    if args.box is not None and (args.box < 8 or args.box % 2):
        raise CommandError(f"--box must be even and at least 8 pixels, got {args.box}")
    if not 0 <= args.seed < 2 ** 31:
        raise CommandError(f"--seed must lie in [0, 2^31), got {args.seed}")
    if not args.no_ctf:
        check_scalar_ctf(args.voltage, args.cs, args.amplitude_contrast, "the CTF options")
        if args.defocus >= DEFOCUS_ANGSTROM_LIMIT:
            raise CommandError(f"--defocus {args.defocus:g} Å is impossible for single-particle data (give it in Å)")
    for option, path in (("--poses-from", args.poses_from), ("--defocus-from", args.defocus_from)):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"{option} {path}: {'is a folder' if os.path.isdir(path) else 'file not found'}")
    check_writable_folder(args.outdir, "-o/--outdir")
    snr = 10.0 ** (args.snr_db / 10.0) if args.snr_db is not None else args.snr
    config = SimulationConfig(
        num_particles=args.num_particles, box=args.box, pixel_size_angstrom=args.pixel_size,
        shift_sigma_angstrom=args.shift_sigma, apply_ctf=not args.no_ctf,
        defocus_median_angstrom=args.defocus, defocus_log_sigma=args.defocus_log_sigma,
        astigmatism_sigma_angstrom=args.astigmatism, voltage_kv=args.voltage,
        spherical_aberration_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
        bfactor_angstrom2=args.bfactor, snr=snr, seed=args.seed, poses_from=args.poses_from and os.path.abspath(args.poses_from),
        defocus_from=args.defocus_from and os.path.abspath(args.defocus_from), junk_fraction=args.junk_fraction)
    map_path = args.map or BUILTIN_MAP
    volume, voxel_size = read_mrc(map_path)
    check_map(volume, map_path)
    if not voxel_size > 0:
        raise CommandError(f"{map_path} has no voxel size in its header; cannot simulate")
    return config, volume, voxel_size


def main(args):
    from cryoai_core.io.atomic import rollback_on_failure
    from cryoai_core.simulate import simulate

    config, volume, voxel_size = validate_simulate(args)
    with rollback_on_failure(args.outdir):
        table = simulate(volume, voxel_size, config, args.outdir, progress=not args.no_progress)
    snr = config.snr
    snr_text = "no noise" if snr is None else f"SNR {snr:.4g} ({10 * math.log10(snr):.1f} dB)"
    print(f"wrote {len(table)} particles ({table.box} px, {table.pixel_size_angstrom:.3f} Å/px, {snr_text}) "
          f"to {os.path.join(args.outdir, 'particles.star')}")
    return 0
