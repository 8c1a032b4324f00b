"""One way to write a file: a temporary file in the target's folder, renamed onto the target.

A reader never sees a half-written file, and a failure (an exception inside the block, a
full disk, Ctrl-C) removes the temporary file and leaves any earlier target untouched.
Every file this package writes goes through :func:`atomic_path` or one of its helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_path", "atomic_dir", "replace_dir", "write_json", "write_text", "write_bytes", "append_text", "save_figure", "write_ply",
           "PathLike"]

PathLike = Union[str, os.PathLike]


def _normal_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the final file the permissions a plain ``open`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``.

    ``suffix`` defaults to the target's own suffix, so libraries that pick a format from the
    file name (``.png``, ``.nii.gz``, ``.safetensors``) write the right one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not suffix:
        suffix = "".join(target.suffixes) if target.name.endswith(".nii.gz") else target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _normal_mode(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` as a whole.

    Used for outputs made of several files that must stay paired (weights + their config):
    a reader sees either the old folder or the new one, never a mix. An existing ``target``
    is moved aside first and deleted only after the new folder is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _normal_mode(tmp, directory=True)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(finished: PathLike, target: PathLike) -> Path:
    """Move the finished folder ``finished`` onto ``target`` (same file system), keeping any old ``target``
    until the new one is in place. For folders whose temporary name must be known in advance (several
    processes writing into one checkpoint folder); otherwise use :func:`atomic_dir`."""
    finished, target = Path(finished), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(finished, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def append_text(path: PathLike, text: str) -> Path:
    """Append ``text`` to a log such as ``metrics.jsonl`` (one write, flushed; the file is created if needed).

    An append cannot be atomic: a crash can leave a torn last line, which readers of such logs must skip
    (``core.train.read_metrics`` does, and a resumed run drops it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
    return path


def write_ply(path: PathLike, points: Any, colours: Any = None, faces: Any = None, edges: Any = None) -> Path:
    """Binary little-endian PLY, atomically: vertices ``x y z`` (float32) with ``red green blue`` (uchar) when
    ``colours`` ``[N, 3]`` in [0, 1] are given, triangles ``faces`` ``[F, 3]`` (``vertex_indices``: uchar count +
    3 ints) and line segments ``edges`` ``[E, 2]`` (``vertex1 vertex2``). Arrays or CPU tensors; open3d, MeshLab,
    CloudCompare and Blender read it."""
    import numpy as np

    xyz = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}",
              "property float x", "property float y", "property float z"]
    if colours is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    vertices = np.empty(len(xyz), dtype=fields)
    vertices["x"], vertices["y"], vertices["z"] = xyz.T
    if colours is not None:
        rgb = (np.clip(np.asarray(colours, dtype=np.float64).reshape(-1, 3), 0, 1) * 255 + 0.5).astype(np.uint8)
        vertices["red"], vertices["green"], vertices["blue"] = rgb.T
    body = [vertices.tobytes()]
    if faces is not None:
        tri = np.asarray(faces).reshape(-1, 3)
        rec = np.empty(len(tri), dtype=[("n", "u1"), ("i", "<i4", 3)])
        rec["n"], rec["i"] = 3, tri
        header += [f"element face {len(tri)}", "property list uchar int vertex_indices"]
        body.append(rec.tobytes())
    if edges is not None:
        seg = np.ascontiguousarray(np.asarray(edges).reshape(-1, 2), dtype="<i4")
        header += [f"element edge {len(seg)}", "property int vertex1", "property int vertex2"]
        body.append(seg.tobytes())
    return write_bytes(path, ("\n".join(header + ["end_header"]) + "\n").encode("ascii") + b"".join(body))


def write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (sorted nowhere, trailing newline) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Numbers from numpy/torch and paths, the usual non-JSON values in a results dict."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"write_json: cannot serialise {type(obj).__name__}")


def save_figure(fig: Any, path: PathLike, dpi: int = 120, close: bool = True) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the suffix); closes it by default."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
