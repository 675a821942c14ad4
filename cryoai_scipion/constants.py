"""Names shared by the cryoAI Scipion plugin: configuration variables, file names, limits."""
from cryoai_core import __version__

CRYOAI_ENV_ACTIVATION = "CRYOAI_ENV_ACTIVATION"
"""Shell command that activates the environment holding ``cryoai`` (empty: the Scipion Python itself)."""

CRYOAI_TORCH_INDEX_URL = "CRYOAI_TORCH_INDEX_URL"
"""pip index of the CUDA build of torch used by ``scipion3 installb cryoai``."""

DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cu121"

CRYOAI_PACKAGE = "cryoai"
"""Name of the binary package (``scipion3 installb cryoai``)."""

CRYOAI_ENV_NAME = f"cryoai-{__version__}"
"""Folder under ``EM_ROOT`` holding the dedicated environment (``bin/activate``, ``bin/cryoai``)."""

INPUT_STAR = "input_particles.star"
"""RELION 3.1 star written by ``convertInputStep`` in the run's ``extra/``."""

INPUT_STACKS = "input"
"""Folder of the run's ``extra/`` holding links to (or conversions of) the input stacks."""

TRAIN_DIR = "cryoai"
"""Output folder of ``cryoai abinit`` inside the run's ``extra/``."""

HALF_MAPS = ("half1.mrc", "half2.mrc")
"""Half maps ``cryoai abinit`` writes in its output folder (``cryoai_core.reconstruct.HALF_MAP_FILES``)."""

RESOLUTION_FILE = "resolution.json"
"""Gold-standard FSC=0.143 resolution of the half maps, written beside them by ``cryoai abinit``."""

PREDICTED_STAR = "predicted_particles.star"
"""Output of ``cryoai predict-poses`` in the run's ``extra/``."""

MIN_PARTICLES = 100
"""Fewer particles than this cannot train the encoder meaningfully; the form refuses them."""

FEW_PARTICLES = 10000
"""Below this many particles the form warns that the pose encoder will generalise poorly."""

MRC_EXTENSIONS = (".mrcs", ".mrc", ".st", ".map")
"""Stack files the core reads directly; other formats are converted to ``.mrcs``."""
