"""Compare a map with a reference (alignment incl. hand, FSC, resolution) and poses with true poses.

Map vs reference: the map is resampled onto the reference grid, aligned to it (rotation, translation and
hand), and the FSC of the aligned map against the reference gives the resolution at 0.5 and 0.143, in
pixels (2.0 = Nyquist) and Å. Writes OUTDIR/aligned_map.mrc and OUTDIR/fsc.png (OUTDIR defaults to the
folder of --map).

Poses vs truth: both particle files (.star or .cs) must list the same particles in the same order. One
global rotation (both hands) aligns the predictions to the truth; reported are the median squared
Frobenius norm ||R_pred - R_true||², the geodesic angle in degrees and the shift mean squared error in
pixels (of the true particles' pixel size); also the map translation that the origins imply (a map off
centre against the truth moves every origin by its projection) and the shift error without it.

Examples:
    cryoai evaluate --map run/map.mrc --reference sim/reference.mrc
    cryoai evaluate --poses run/particles.star --true-poses sim/particles.star --json eval.json
"""
import json
import logging
import math
import os

import numpy as np

from cryoai_core.cli import CommandError
from cryoai_core.cli.checks import check_writable_folder
from cryoai_core.io.atomic import atomic_open

logger = logging.getLogger(__name__)


def add_args(parser):
    parser.add_argument("--map", metavar="MAP.mrc", help="map to evaluate")
    parser.add_argument("--reference", metavar="REF.mrc", help="reference (ground-truth) map")
    parser.add_argument("--poses", metavar="PRED.star", help="particles with predicted poses (.star or .cs)")
    parser.add_argument("--true-poses", metavar="TRUE.star", help="the same particles with the true poses")
    parser.add_argument("-o", "--outdir", default=None,
                        help="folder for aligned_map.mrc and fsc.png (default: the folder of --map)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write every figure to this JSON file")
    parser.add_argument("--no-align", action="store_true",
                        help="compare the map as it is (only resampled onto the reference grid)")


def _voxel_size(path: str, value: float, fallback: float | None) -> float:
    if value > 0:
        return value
    if fallback is not None and fallback > 0:
        logger.warning("%s has no voxel size in its header; assuming %.4f Å", path, fallback)
        return fallback
    logger.warning("%s has no voxel size in its header; assuming 1 Å", path)
    return 1.0


def evaluate_map(map_path: str, reference_path: str, outdir: str | None = None, align: bool = True,
                 config=None) -> dict:
    """Resample, align (both hands) and FSC a map against a reference; writes the aligned map and a plot.

    Args:
        map_path: the map to evaluate.
        reference_path: the reference map (its grid and voxel size are used).
        outdir: folder for ``aligned_map.mrc`` and ``fsc.png`` (default: the folder of ``map_path``).
        align: search the best rigid alignment (else the resampled map is compared as it is).
        config: :class:`~cryoai_core.evaluate.alignment.AlignmentConfig` (default settings if ``None``).

    Returns:
        A JSON-ready dict: paths, ``box``, ``pixel_size_angstrom``, ``alignment`` (rotation ``R``, shift
        ``t`` in voxels ``(x, y, z)`` and Å, ``mirrored``, ``correlation``; ``None`` without alignment),
        ``fsc`` (``frequencies_per_pixel``, ``frequencies_per_angstrom``, ``values``), ``resolution``
        (``{"0.5": {"pixels", "angstrom"}, "0.143": {...}}``) and ``files``.
    """
    from cryoai_core.evaluate.alignment import AlignmentConfig, align_volumes, resample_to_reference
    from cryoai_core.evaluate.fsc import resolution_report, fsc_curve
    from cryoai_core.io.mrc import read_mrc, write_mrc
    from cryoai_core.plots import plot_fsc

    from cryoai_core.io.content_checks import check_map

    reference, reference_voxel = read_mrc(reference_path)
    check_map(reference, reference_path, "reference map")
    volume, voxel = read_mrc(map_path)
    check_map(volume, map_path)
    reference_voxel = _voxel_size(reference_path, reference_voxel, None)
    voxel = _voxel_size(map_path, voxel, reference_voxel)
    resampled = resample_to_reference(volume, voxel, reference.shape, reference_voxel)
    report = {"map": os.path.abspath(map_path), "reference": os.path.abspath(reference_path),
              "box": int(reference.shape[0]), "pixel_size_angstrom": reference_voxel, "alignment": None}
    if align:
        result = align_volumes(resampled, reference, config or AlignmentConfig())
        aligned = result.aligned_map
        report["alignment"] = {"rotation": result.rotation.tolist(), "shift_px": result.shift_px.tolist(),
                               "shift_angstrom": (result.shift_px * reference_voxel).tolist(),
                               "mirrored": result.mirrored, "correlation": result.correlation}
    else:
        aligned = resampled
    frequencies, fsc = fsc_curve(aligned, reference)
    report["fsc"] = {"frequencies_per_pixel": frequencies.tolist(),
                     "frequencies_per_angstrom": (frequencies / reference_voxel).tolist(),
                     "values": fsc.tolist()}
    report["resolution"] = resolution_report(frequencies, fsc, reference_voxel)
    outdir = outdir or os.path.dirname(os.path.abspath(map_path))
    os.makedirs(outdir, exist_ok=True)
    aligned_path = os.path.join(outdir, "aligned_map.mrc")
    write_mrc(aligned_path, aligned, reference_voxel)
    label = "aligned map vs reference" if align else "map vs reference"
    plot_path = plot_fsc(os.path.join(outdir, "fsc.png"), {label: (frequencies, fsc)}, reference_voxel)
    report["files"] = {"aligned_map": aligned_path, "fsc_plot": plot_path}
    return report


def evaluate_poses(pred_path: str, true_path: str) -> dict:
    """Pose errors of the particles in ``pred_path`` against the same particles (same order) in ``true_path``.

    Shifts are converted from Å to pixels with the true particles' pixel size. Returns the dict of
    :func:`cryoai_core.evaluate.poses.pose_errors` plus ``pixel_size_angstrom`` and the two paths.
    """
    from cryoai_core.evaluate.poses import pose_errors
    from cryoai_core.io.readers import read_particles
    from cryoai_core.rotations import euler_to_matrix

    predicted, truth = read_particles(pred_path), read_particles(true_path)
    for path, table in ((pred_path, predicted), (true_path, truth)):
        if not table.has_poses:
            raise ValueError(f"{path} has no poses (rlnAngleRot/Tilt/Psi)")
    if len(predicted) != len(truth):
        raise ValueError(f"{pred_path} has {len(predicted)} particles but {true_path} has {len(truth)}; "
                         "the files must list the same particles in the same order")
    if not np.array_equal(predicted.image_indices, truth.image_indices):
        logger.warning("the image indices of %s and %s differ; particles are matched by order",
                       pred_path, true_path)
    pixel = truth.pixel_size_angstrom
    report = pose_errors(euler_to_matrix(predicted.euler_angles_degrees).numpy(),
                         euler_to_matrix(truth.euler_angles_degrees).numpy(),
                         _shifts_px(predicted, pixel), _shifts_px(truth, pixel))
    report.update({"poses": os.path.abspath(pred_path), "true_poses": os.path.abspath(true_path),
                   "pixel_size_angstrom": pixel})
    return report


def _shifts_px(table, pixel_size_angstrom: float) -> np.ndarray:
    origins = table.origins_angstrom
    if origins is None:
        return np.zeros((len(table), 2))
    return np.asarray(origins, dtype=np.float64) / pixel_size_angstrom


def _finite_or_none(value):
    """JSON has no infinities: non-finite floats become ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def _print_map_summary(report: dict) -> None:
    print(f"map       {report['map']}")
    print(f"reference {report['reference']} ({report['box']}³, {report['pixel_size_angstrom']:.3f} Å)")
    alignment = report["alignment"]
    if alignment is not None:
        shift = ", ".join(f"{value:.2f}" for value in alignment["shift_px"])
        print(f"alignment hand {'mirrored' if alignment['mirrored'] else 'original'}, shift ({shift}) px, "
              f"correlation {alignment['correlation']:.4f}")
    for threshold, values in report["resolution"].items():
        print(f"FSC {threshold:>5}: {values['pixels']:.2f} px = {values['angstrom']:.2f} Å")
    print(f"wrote {report['files']['aligned_map']} and {report['files']['fsc_plot']}")


def _print_pose_summary(report: dict) -> None:
    print(f"poses: {report['num_particles']} particles, hand {report['hand']}")
    print(f"  median ||R_pred - R_true||²_F {report['median_squared_frobenius']:.4f}"
          f" (mean {report['mean_squared_frobenius']:.4f})")
    print(f"  geodesic angle median {report['median_angle_degrees']:.2f}°"
          f" mean {report['mean_angle_degrees']:.2f}°;"
          f" within 5/10/20°: {report['fraction_within_5_degrees']:.1%} / "
          f"{report['fraction_within_10_degrees']:.1%} / {report['fraction_within_20_degrees']:.1%}")
    if "shift_mse_px2" in report:
        print(f"  shift MSE {report['shift_mse_px2']:.3f} px²,"
              f" median error {report['median_shift_error_px']:.3f} px")
        translation = ", ".join(f"{value:.2f}" for value in report["map_translation_px"])
        print(f"  map translation implied by the origins ({translation}) px; without it, median shift error "
              f"{report['median_shift_error_map_translated_px']:.3f} px")


def validate_evaluate(args) -> None:
    """Check the options and the output places without writing anything (inputs are checked as read)."""
    compare_map = args.map is not None or args.reference is not None
    compare_poses = args.poses is not None or args.true_poses is not None
    if not compare_map and not compare_poses:
        raise CommandError("nothing to do: give --map and --reference, and/or --poses and --true-poses")
    if compare_map and (args.map is None or args.reference is None):
        raise CommandError("--map and --reference go together")
    if compare_poses and (args.poses is None or args.true_poses is None):
        raise CommandError("--poses and --true-poses go together")
    if args.outdir is not None and not compare_map:
        raise CommandError("-o/--outdir holds the map comparison's files; it needs --map and --reference")
    for option, path in (("--map", args.map), ("--reference", args.reference), ("--poses", args.poses),
                         ("--true-poses", args.true_poses)):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"{option} {path}: {'is a folder' if os.path.isdir(path) else 'file not found'}")
    if compare_map:
        check_writable_folder(args.outdir or os.path.dirname(os.path.abspath(args.map)), "-o/--outdir")
    if args.json:
        if os.path.isdir(args.json):
            raise CommandError(f"--json {args.json} is a folder; give the name of the JSON file to write")
        check_writable_folder(os.path.dirname(os.path.abspath(args.json)), "--json")


def main(args):
    from cryoai_core.io.atomic import rollback_on_failure

    validate_evaluate(args)
    results = {}
    if args.poses is not None:
        results["poses"] = evaluate_poses(args.poses, args.true_poses)
    if args.map is not None:
        outdir = args.outdir or os.path.dirname(os.path.abspath(args.map))
        with rollback_on_failure(outdir):
            results["map"] = evaluate_map(args.map, args.reference, outdir, align=not args.no_align)
            if args.json:
                _write_json(args.json, results)
        _print_map_summary(results["map"])
    elif args.json:
        _write_json(args.json, results)
    if "poses" in results:
        _print_pose_summary(results["poses"])
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _write_json(path: str, results: dict) -> None:
    from cryoai_core.io.atomic import rollback_on_failure

    folder = os.path.dirname(os.path.abspath(path))
    with rollback_on_failure(folder):
        os.makedirs(folder, exist_ok=True)
        with atomic_open(path, "w") as handle:
            json.dump(_finite_or_none(results), handle, indent=2, allow_nan=False)
