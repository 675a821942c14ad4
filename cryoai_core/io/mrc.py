"""MRC maps and MRCS image stacks: read and write with the voxel size, stacks memory-mapped.

Arrays are ``data[z, y, x]`` (``x`` is the fast axis, as stored); a stack of ``N`` images of side ``L`` is
``(N, L, L)``. The voxel (pixel) size lives in the header, in Å. Stacks are opened read-only and
memory-mapped (never loaded whole); before mapping, the data size the header announces is checked
against the file size, so a truncated file gets a clear error instead of a failed or silent read.
"""
import logging
import os
import warnings

import mrcfile
import mrcfile.utils
import numpy as np

from cryoai_core.io.atomic import atomic_path, commit, discard, temporary_name

logger = logging.getLogger(__name__)

HEADER_BYTES = 1024
"""Size of the fixed MRC header; the extended header (``nsymbt`` bytes) follows it."""


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")


def _read_header(path: str):
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as mrc:
            return mrc.header.copy()
    except ValueError as error:
        raise ValueError(f"{path} is not a valid MRC file: {error}") from None


def stack_shape(path: str) -> tuple[int, int, int]:
    """``(count, ny, nx)`` of an image stack, from its header, after checking the file is complete.

    A single 2D image counts as a stack of one. Raises ``FileNotFoundError`` naming a missing file and
    ``ValueError`` for a corrupt or truncated one or for a complex-valued mode.
    """
    shape, _, _ = _checked_layout(path)
    return shape


def _checked_layout(path: str):
    _require_file(path, "particle stack")
    header = _read_header(path)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as error:
        raise ValueError(f"{path}: unsupported MRC data mode ({error})") from None
    if dtype.kind == "c":
        raise ValueError(f"{path} holds complex values (MRC mode {int(header.mode)}); images must be real")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise ValueError(f"{path}: the header gives an empty data block ({nz} x {ny} x {nx})")
    offset = HEADER_BYTES + int(header.nsymbt)
    available = os.path.getsize(path) - offset
    image_bytes = nx * ny * dtype.itemsize
    if available < nz * image_bytes:
        raise ValueError(
            f"{path}: file is truncated: header says {nz} images of {ny}x{nx} but the file holds only "
            f"{max(available, 0) // image_bytes} complete images ({max(available, 0)} data bytes)")
    if available > nz * image_bytes:
        logger.warning("%s is %d bytes longer than its header says; the extra bytes are ignored", path,
                       available - nz * image_bytes)
    return (nz, ny, nx), dtype, offset


def open_stack(path: str) -> np.ndarray:
    """Memory-map an image stack read-only.

    Args:
        path: ``.mrcs`` (or ``.mrc``) file.

    Returns:
        ``(N, L, L)`` read-only ``numpy.memmap`` in the file's data type (a 2D image gives ``N = 1``).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not an MRC file, is truncated, holds complex or non-square images.
    """
    (count, ny, nx), _, _ = _checked_layout(path)
    if ny != nx:
        raise ValueError(f"{path}: images must be square, got {ny}x{nx} (rows x columns)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # extra trailing bytes: logged above
        try:
            with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
                data = mrc.data
        except ValueError as error:
            raise ValueError(f"{path} cannot be read as an MRC stack: {error}") from None
    return data.reshape(count, ny, nx)


def read_mrc(path: str) -> tuple[np.ndarray, float]:
    """Read a whole map (or image) into memory.

    Returns:
        ``(data, voxel_size_angstrom)``: float32 ``(Z, Y, X)`` for a volume or stack (``(Y, X)`` for a
        single 2D image) and the header's voxel size along x in Å (0.0 when the header has none).
    """
    _require_file(path, "MRC file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel = mrc.voxel_size
        except ValueError as error:
            raise ValueError(f"{path} is not a valid MRC file: {error}") from None
    voxel_sizes = (float(voxel.x), float(voxel.y), float(voxel.z))
    if data.ndim == 3 and voxel_sizes[0] > 0 and not np.allclose(voxel_sizes[:2], voxel_sizes[0], rtol=1e-4):
        logger.warning("%s has anisotropic voxels %s Å; using the x size", path, voxel_sizes)
    return data, voxel_sizes[0]


def write_mrc(path: str, array, voxel_size_angstrom: float) -> None:
    """Write ``array`` (``(Z, Y, X)`` volume or ``(Y, X)`` image) as float32 MRC, replacing ``path`` atomically."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"an MRC map must be 2D or 3D, got shape {data.shape}")
    with atomic_path(path) as temporary:
        with mrcfile.new(temporary, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = float(voxel_size_angstrom)


class StackWriter:
    """Write an ``.mrcs`` stack of ``count`` float32 images chunk by chunk, without holding it in memory.

    A temporary file next to ``path`` is pre-allocated and memory-mapped; header statistics (min, max,
    mean, rms) are accumulated over the written chunks. When the ``with`` block ends normally the file
    is fsynced and renamed to ``path``; if it raises, the temporary file is removed and ``path`` is
    untouched.

    Example::

        with StackWriter("particles.mrcs", count=1000, box=64, pixel_size_angstrom=1.5) as writer:
            writer.write(0, images)            # images: (B, 64, 64)
    """

    def __init__(self, path: str, count: int, box: int, pixel_size_angstrom: float):
        if count < 1 or box < 1:
            raise ValueError(f"a stack needs at least one image of at least one pixel, got {count} x {box}")
        self.path = path
        self.count = int(count)
        self.box = int(box)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self._mrc = None
        self._temporary = None
        self._written = 0
        self._min = np.inf
        self._max = -np.inf
        self._sum = 0.0
        self._sum_squares = 0.0

    def __enter__(self) -> "StackWriter":
        self._temporary = temporary_name(self.path)
        try:
            self._mrc = mrcfile.new_mmap(self._temporary, shape=(self.count, self.box, self.box), mrc_mode=2,
                                         overwrite=True)
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size_angstrom
        except BaseException:
            if self._mrc is not None:
                self._mrc.close()
            discard(self._temporary)
            raise
        return self

    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` ``(B, box, box)`` at positions ``start .. start + B - 1`` (0-based)."""
        if self._mrc is None:
            raise RuntimeError("StackWriter.write called outside its 'with' block")
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (self.box, self.box):
            raise ValueError(f"expected images of shape (B, {self.box}, {self.box}), got {images.shape}")
        stop = start + len(images)
        if start < 0 or stop > self.count:
            raise ValueError(f"images {start}..{stop - 1} do not fit in a stack of {self.count}")
        self._mrc.data[start:stop] = images
        self._written += len(images)
        values = images.astype(np.float64)
        self._min = min(self._min, float(values.min()))
        self._max = max(self._max, float(values.max()))
        self._sum += float(values.sum())
        self._sum_squares += float(np.square(values).sum())

    def __exit__(self, exc_type, exc, traceback) -> None:
        mrc, self._mrc = self._mrc, None
        if exc_type is not None:
            mrc.close()
            discard(self._temporary)
            return
        try:
            self._finish(mrc)
        except BaseException:
            discard(self._temporary)
            raise

    def _finish(self, mrc) -> None:
        if self._written:
            size = self._written * self.box * self.box
            mean = self._sum / size
            header = mrc.header
            header.dmin, header.dmax, header.dmean = self._min, self._max, mean
            header.rms = np.sqrt(max(self._sum_squares / size - mean * mean, 0.0))
        if self._written < self.count:
            logger.warning("%s: %d of %d images were written; the rest are zeros", self.path,
                           self._written, self.count)
        mrc.close()
        commit(self._temporary, self.path)


def locate_stack(name: str, base_folder: str, root: str | None = None, search_parents: int = 0) -> str:
    """Absolute path of the stack ``name`` written in a metadata file.

    Absolute names are kept. Relative names are taken from ``root`` when given, else from
    ``base_folder`` (the metadata file's folder); if the file is not there, the first
    ``search_parents`` parent folders are tried too (RELION and cryoSPARC write paths relative to the
    project folder, which holds the job folder of the metadata file). A name found nowhere resolves
    against ``base_folder``, so that the error about it names the expected place.
    """
    name = name.strip()
    if os.path.isabs(name):
        return os.path.normpath(name)
    if root is not None:
        return os.path.normpath(os.path.join(os.path.abspath(root), name))
    folder = os.path.abspath(base_folder)
    first = os.path.normpath(os.path.join(folder, name))
    candidate_folder = folder
    for _ in range(search_parents):
        if os.path.exists(first):
            break
        candidate_folder = os.path.dirname(candidate_folder)
        candidate = os.path.normpath(os.path.join(candidate_folder, name))
        if os.path.exists(candidate):
            logger.info("found %s relative to %s", name, candidate_folder)
            return candidate
    return first


def common_box(stack_files, stack_ids: np.ndarray, image_indices: np.ndarray, source: str) -> int:
    """Check the stacks of a particle set from their headers and return their common box.

    Every stack must exist, be complete, hold square images of one even side shared by all stacks,
    and contain each image index (0-based) that refers to it.

    Args:
        stack_files: absolute stack paths.
        stack_ids: ``(N,)`` index into ``stack_files`` per particle.
        image_indices: ``(N,)`` 0-based image index per particle.
        source: the metadata file, named in error messages.
    """
    counts = np.zeros(len(stack_files), dtype=np.int64)
    first_box = None
    for number, path in enumerate(stack_files):
        try:
            count, ny, nx = stack_shape(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"particle stack not found: {path} (named in {source}; relative stack paths are resolved "
                f"from the metadata file's folder unless a root folder is given)") from None
        if ny != nx:
            raise ValueError(f"{path}: images must be square, got {ny}x{nx} (rows x columns)")
        if first_box is None:
            first_box = (nx, path)
        elif nx != first_box[0]:
            raise ValueError(f"{source}: stacks have different box sizes: {first_box[0]} px in {first_box[1]} "
                             f"and {nx} px in {path}; all particles must share one box")
        counts[number] = count
    box = first_box[0]
    if box % 2:
        raise ValueError(f"{source}: the box is {box} pixels, an odd size; boxes must be even "
                         "(crop or re-extract the particles to an even box)")
    beyond = np.flatnonzero(image_indices >= counts[stack_ids])
    if len(beyond):
        particle = int(beyond[0])
        stack = stack_files[int(stack_ids[particle])]
        raise ValueError(f"{source}: image {int(image_indices[particle]) + 1:06d}@{stack} (particle {particle + 1} "
                         f"in file order) is out of range: the stack holds only {int(counts[stack_ids[particle]])} "
                         f"images ({len(beyond)} particle(s) out of range)")
    return int(box)
