"""Installed version of the distribution (from package metadata; source checkouts report 0+unknown)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lowrank-vision")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
