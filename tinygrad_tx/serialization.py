"""Files: the one atomic writer, and state dicts saved as .npz files that load without unpickling.

    tx.save(model.state_dict(), "model.npz")
    model.load_state_dict(tx.load("model.npz"))
    atomic_write_text("notes.txt", "...")       # every file the package writes goes through atomic_write
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import shutil
import uuid
import zipfile
from collections.abc import Mapping

from . import backend
from .tensor import Tensor


def atomic_write(path, write) -> None:
    """Write a file so that readers see the old content or the complete new one, never half of it.
    Every file the package writes goes through here.

    `write` is bytes, a str (written as UTF-8), or a callable that writes into the open binary file.
    The data goes to a fresh temporary file in the same folder, created with O_EXCL under a random
    name (so a planted file or symlink is never followed), is fsync'ed, and is renamed over `path`
    with os.replace. On any failure the temporary file is removed and `path` is left untouched.
    """
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
    # mode 0o666, so the umask decides, as for a plain open()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode("utf-8") if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())                        # the data is on disk before the rename
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path):
    """Fill a folder that appears at `path` complete or not at all.

        with atomic_directory("run/step-00000500") as tmp:
            save(state, os.path.join(tmp, "model.npz"))

    The body writes into a fresh temporary folder beside `path` (created with a random name, so a
    planted folder is never used); on success its files are fsync'ed and it is renamed to `path`
    (a leftover folder at `path` is replaced); on any failure it is removed and `path` is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        fsync_directory(tmp)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
        fsync_directory(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_directory(path) -> None:
    """Make the names in a folder (new files, renames) durable, as fsync does for a file's data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, text)


def atomic_write_json(path, obj) -> None:
    """Write `obj` as JSON; NaN and infinity are refused (ValueError), as they are not valid JSON."""
    atomic_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def _host_array(name, value):
    """A host NumPy array for one state-dict entry, or a TypeError naming the key."""
    if isinstance(value, Tensor):
        value = value.data
    if backend.is_array(value):
        arr = backend.to_numpy(value)
    elif isinstance(value, numbers.Number) or getattr(value, "ndim", None) == 0:   # also NumPy scalars
        arr = backend.host_array(value)                 # a scalar becomes a 0-d array
    else:
        raise TypeError(f"save: the value of key {name!r} is a {type(value).__name__}; only arrays, "
                        f"Tensors and numbers can be saved (keep other metadata in a JSON file)")
    if arr.dtype.hasobject:
        raise TypeError(f"save: the value of key {name!r} is an object array, which would need pickling")
    return arr


def save(state_dict, path) -> None:
    """Write a dict of name -> array (NumPy/CuPy arrays, Tensors or numbers) to `path` as .npz.

    The file is written to a temporary file in the same folder and renamed over `path` with
    os.replace, so a reader sees either the old file or the complete new one, never a half-written
    file, and a failed save leaves the old file untouched. `path` is used exactly as given (no
    '.npz' is appended).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save: expected a dict of name -> array, got a {type(state_dict).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"save: keys must be strings, got {name!r} ({type(name).__name__})")
        arrays[name] = _host_array(name, value)

    atomic_write(path, lambda f: write_npz(f, arrays))


def load(path) -> dict:
    """Read a file written by `save` into a dict of name -> host NumPy array.

    Uses allow_pickle=False: a file holding pickled objects raises instead of running code.
    Scalars come back as 0-d arrays. A file that is not an .npz archive, or a damaged one, is a
    ValueError naming the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):       # a zip archive's first entry, or an empty one
        what = "it is empty" if not magic else f"it starts with {magic!r}, not a zip archive's 'PK'"
        raise ValueError(f"load: {path} is not an .npz file ({what})")
    try:
        return read_npz(path)
    except (zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"load: {path} is a damaged .npz file: {e}") from e


# ---------------------------------------------------------------------------- .npz files
# An .npz is a zip archive of .npy files, one per array: NumPy's own host format, whatever the device.
def write_npz(file, arrays: dict) -> None:
    """Write name -> host array into an open binary file as an uncompressed .npz.

    Like numpy.savez, but any name is allowed (savez reserves 'file' and 'allow_pickle') and
    object arrays are refused instead of pickled.
    """
    host = backend.get_xp("cpu")
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as f:
                host.lib.format.write_array(f, host.asanyarray(arr), allow_pickle=False)


def read_npz(path) -> dict:
    """Read an .npz into a dict of NumPy arrays, in file order; never unpickles."""
    with backend.get_xp("cpu").load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
