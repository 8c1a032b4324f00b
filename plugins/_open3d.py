"""Import open3d on a machine without the system's libusb.

open3d's Linux wheels link against ``libusb-1.0.so.0``, which a fresh machine may not have
(Debian's ``libusb-1.0-0`` package). The PyPI package ``libusb-package`` ships that library;
loading it first with ``RTLD_GLOBAL`` satisfies open3d's dependency (the dynamic loader
matches it by its soname), so ``pip install`` alone gives a working open3d.
"""

from __future__ import annotations

import ctypes
from types import ModuleType

__all__ = ["import_open3d"]


def import_open3d() -> ModuleType:
    """``import open3d``, preloading ``libusb_package``'s libusb when the system has none."""
    try:
        import open3d
        return open3d
    except (ImportError, OSError) as exc:
        if "libusb" not in str(exc):
            raise
        first_error = exc
    try:
        import libusb_package
    except ImportError as exc:
        raise ImportError(f"open3d needs libusb-1.0.so.0 ({first_error}); install the 'libusb-package' "
                          "wheel (part of the plugin's extra) or the system package libusb-1.0-0") from exc
    path = libusb_package.get_library_path()
    if path is None:
        raise ImportError(f"open3d needs libusb-1.0.so.0 ({first_error}) and libusb_package ships none for this platform")
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    import open3d
    return open3d
