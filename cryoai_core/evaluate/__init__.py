"""Evaluation against ground truth: FSC and resolution, rigid map alignment (both hands), pose errors."""
from cryoai_core.evaluate.alignment import (AlignmentConfig, AlignmentResult, align_volumes, apply_alignment,
                                            mirror_volume, resample_to_reference)
from cryoai_core.evaluate.fsc import (FSC_THRESHOLDS, fsc_curve, pixels_to_angstrom, resolution_at,
                                      resolution_report)
from cryoai_core.evaluate.poses import fit_global_rotation, pose_errors, shift_errors

__all__ = [
    "AlignmentConfig", "AlignmentResult", "align_volumes", "apply_alignment", "mirror_volume",
    "resample_to_reference", "FSC_THRESHOLDS", "fsc_curve", "pixels_to_angstrom", "resolution_at",
    "resolution_report", "fit_global_rotation", "pose_errors", "shift_errors",
]
