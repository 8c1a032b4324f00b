"""Real photographs that ship inside registry packages, and the SR data sets built from them.

:data:`CATALOGUE` names each source: registry (Debian or PyPI), package, version, licence per file
glob, where the package installs the files and which of them are photographs. :func:`find_photos`
finds them on this machine (Debian packages under ``/`` or under a folder where the ``.deb`` files
were unpacked with ``dpkg-deb -x``; PyPI packages through their import location).
:func:`build_sr_data` (``lowrank-sr make-data``) writes three disjoint sets:

* ``train/``: the Endless Sky landscape photographs (Debian ``endless-sky-high-dpi``: 273 photos
  1440x720, public domain / CC-BY-SA, see :data:`ENDLESS_SKY_LICENCES`) except the validation files;
* ``val/``: the held-out Endless Sky files (``crc32(name) % 10 == 0``, 27 photos), for every choice;
* ``eval/``: photos of *other* sources: Debian wallpaper packages (``lomiri-wallpapers-16.04``
  and ``-20.04``, ``mate-backgrounds`` nature) and the photos that ship with scikit-image and
  scikit-learn (the project's earlier evaluation set). Disjoint from training by file and by source.
* Only when asked (``extra_train``, ``lowrank-sr make-data --extra-train plasma``): more training photographs
  from sources of role ``extra`` — the 11 photographs among KDE Plasma's wallpapers (Debian
  ``plasma-workspace-wallpapers``, 2560x1600; LGPL-3.0 by each wallpaper's metadata, GPL-2+ by the package's
  ``debian/copyright``: both recorded), each giving its ``crops`` most-textured grid windows
  (:func:`_grid_windows`) instead of one, held out for validation by the same rule as Endless Sky.

Processing, stated (no paper prescribes one): the Endless Sky JPEGs (quality ~85) are down-scaled
by ``factor`` (2, Lanczos) to hide their compression artefacts, and each training image keeps the
``crop x crop`` window with the most gradient energy (so the set fits a small archive: 320 px
gives about 38 MB of lossless WebP for all three sets); validation images keep the centre window. Wallpapers (1-6k px) are
down-scaled so their short side is ``eval_side`` (384) and centre-cropped to at most 3:2; photos
whose short side is at most twice that (the scikit-image / scikit-learn ones) are used as shipped. Before anything is written, every training
and validation image is compared with every evaluation image by SHA-256 of the file and by its
content (aspect ratio and a 32x32 grey thumbnail, so resized or re-encoded copies match), and an overlap is an error.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence, Union

import numpy as np

from lowrank_vision.core.files import atomic_path, write_json, write_text

from .readers import IMAGE_SUFFIXES

__all__ = [
    "PhotoSource", "Photo", "Fingerprint", "CATALOGUE", "ENDLESS_SKY_LICENCES", "find_photos", "fingerprint", "check_disjoint",
    "is_validation", "build_sr_data",
]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class PhotoSource:
    """One package's photographs."""

    name: str
    """Short name, used as the prefix of the written files."""
    registry: Literal["debian", "pypi", "local"]
    package: str
    """Package name on the registry (``apt-get install NAME`` / ``pip install NAME``)."""
    version: str
    """The version the catalogue was made from."""
    directory: str
    """Debian: absolute install folder; PyPI: ``import_name/sub/folder``."""
    globs: tuple[str, ...]
    """File names (globs) in ``directory`` that are photographs."""
    licences: tuple[tuple[str, str], ...]
    """``(file glob, "licence; copyright holder")``, the first match wins."""
    role: Literal["train", "eval", "extra"]
    """``train`` sources give the training and validation sets, ``eval`` sources the evaluation set, ``extra``
    sources more training and validation photos when asked for by name (``build_sr_data(extra_train=...)``)."""
    name_depth: int = 0
    """0: a photo is named by its file's stem; k: by the folder k levels above the file (KDE wallpapers are
    ``<Name>/contents/images/<W>x<H>.jpg``: 3)."""
    crops: int = 1
    """Training windows per photo: 1 keeps the most-textured window; more keeps that many grid windows."""

    def licence_of(self, file_name: str) -> str:
        for pattern, licence in self.licences:
            if fnmatch.fnmatch(file_name, pattern):
                return licence
        raise ValueError(f"{self.name}: no licence recorded for {file_name}")


@dataclass(frozen=True)
class Photo:
    """A photograph found on this machine."""

    source: PhotoSource
    path: Path

    @property
    def key(self) -> str:
        """The photo's own name inside its source (see :attr:`PhotoSource.name_depth`)."""
        depth = self.source.name_depth
        return self.path.parents[depth - 1].name if depth else self.path.stem.replace("@2x", "")

    @property
    def name(self) -> str:
        return f"{self.source.name}__{self.key}"

    @property
    def licence(self) -> str:
        return self.source.licence_of(self.path.name if not self.source.name_depth else self.key)


_UNSPLASH = ("badlands0", "badlands5", "badlands7", "badlands8", "beach0", "beach2", "beach3", "beach4", "beach5", "beach6",
             "canyon0", "canyon7", "city4", "city6", "city8", "city9", "city10", "city11", "city12", "desert1", "desert2", "fields1",
             "fields2", "fields5", "fields6", "fields7", "fields9", "fog0", "fog2", "fog4", "forest1", "forest2", "forest3", "forest4",
             "forest5", "hills2", "lava1", "lava2", "lava6", "mountain1", "mountain3", "mountain4", "mountain5", "mountain6",
             "mountain7", "mountain8", "mountain9", "sea3", "sea8", "sky0", "sky2", "sky3", "sky7", "sky8", "sky9", "snow0", "snow1",
             "snow2", "snow3", "snow4", "snow6", "snow7", "snow10", "space2", "water0", "water8")
ENDLESS_SKY_LICENCES: tuple[tuple[str, str], ...] = (
    ("bwerner*", "CC-BY-SA-3.0; Berthold Werner (Wikimedia Commons), cropped and edited"),
    ("myrabella*", "CC-BY-SA-3.0; Myrabella (Wikimedia Commons), cropped and edited"),
    ("dmottl*", "CC-BY-SA-3.0; Dmitry A. Mottl (Wikimedia Commons), cropped and edited"),
    ("mfield*", "CC-BY-SA-3.0; Matthew Field (Wikimedia Commons), cropped and edited"),
    ("*-sfiera*", "CC-BY-SA-4.0; Chris Pickel"),
    ("*-striker*", "CC-BY-SA-4.0; Michael Wilso"),
    ("*-harro*", "CC-BY-SA-4.0; @harro.eu"),
    ("*-iridium*", "CC-BY-SA-4.0; @Iridium Ore"),
    ("*-spfld*", "CC-BY-SA-4.0; Eric Denni"),
    *((f"{stem}@2x.jpg", "public domain; unsplash.com") for stem in _UNSPLASH),
    ("lava0*", "public domain; USGS"),
    ("lava5*", "CC-BY-SA-4.0; Michael Zahniser"),
    *((g, "public domain; NASA") for g in ("desert0*", "earthrise*", "nasa*", "space*", "station1*", "station2*", "station3*", "station4*")),
    ("*", "public domain; morgue-file.com donors"),
)
"""Per-file licences of the Endless Sky land images, from the package's ``debian/copyright``
(``/usr/share/doc/endless-sky-high-dpi/copyright``), most specific first."""

_LOMIRI_16 = (
    ("aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0; Aitzol Berasategi"),
    ("Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0; Sander Klootwijk"),
    ("Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0; Bolly"),
    ("free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0; Peter Nerlich"),
    ("friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0; Aitzol Berasategi"),
    ("greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0; Peter Nerlich"),
    ("life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0; Aitzol Berasategi"),
    ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0; Aitzol Berasategi"),
    ("Picture_0B_by_freespace.jpg", "CC-BY-4.0; Trevor 'Freespace'"),
    ("Picture_1A_by_freespace.jpg", "CC-BY-4.0; Trevor 'Freespace'"),
    ("seeding_by_Clements_Engelhardt.jpg", "CC0-1.0; Clemens Engelhardt"),
    ("sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0; Aitzol Berasategi"),
    ("Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0; Jakub Mede"),
)
_PLASMA_PHOTOS = (
    ("BytheWater", "Maciej Wiklo"), ("ColdRipple", "Risto Saukonpää"), ("ColorfulCups", "Dmitri Popov"),
    ("DarkestHour", "Risto Saukonpää"), ("EveningGlow", "Ian Hex"), ("FallenLeaf", "Martin Klapetek"), ("Grey", "Sigi Sagi"),
    ("Kite", "Risto Saukonpää"), ("OneStandsOut", "Risto Saukonpää"), ("Path", "Risto Saukonpää"), ("summer_1am", "Risto Saukonpää"),
)
"""The photographs among plasma-workspace-wallpapers' 30 wallpapers (the rest is vector art) and their authors, from each
wallpaper's ``metadata.json`` (``KPlugin.Authors``; licence field ``LGPLv3``)."""
_MATE_NATURE = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood",
                "YellowFlower")

CATALOGUE: tuple[PhotoSource, ...] = (
    PhotoSource("endless-sky", "debian", "endless-sky-high-dpi", "0.9.8-1",
                "/usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land", ("*@2x.jpg",), ENDLESS_SKY_LICENCES, "train"),
    PhotoSource("lomiri-16.04", "debian", "lomiri-wallpapers-16.04", "20.04.0-2", "/usr/share/backgrounds",
                tuple(name for name, _ in _LOMIRI_16), _LOMIRI_16, "eval"),
    PhotoSource("lomiri-20.04", "debian", "lomiri-wallpapers-20.04", "20.04.0-2", "/usr/share/backgrounds",
                ("Kleiber_by_Lukas_Baubkus.jpg",), (("*", "CC-BY-SA-3.0; Lukas Baubkus"),), "eval"),
    PhotoSource("mate-nature", "debian", "mate-backgrounds", "1.26.0-1", "/usr/share/backgrounds/mate/nature",
                tuple(f"{n}.jpg" for n in _MATE_NATURE), (("*", "GPL-2+; authors in /usr/share/doc/mate-backgrounds/copyright"),), "eval"),
    PhotoSource("plasma", "debian", "plasma-workspace-wallpapers", "4:5.27.5-2", "/usr/share/wallpapers",
                tuple(f"{n}/contents/images/2560x1600.jpg" for n, _ in _PLASMA_PHOTOS),
                tuple((f"{n}*", f"LGPL-3.0 (metadata.json; debian/copyright: GPL-2+, KDE Visual Design Group); {who}")
                      for n, who in _PLASMA_PHOTOS), "extra",
                name_depth=3, crops=6),
    PhotoSource("skimage", "pypi", "scikit-image", ">=0.22", "skimage/data", ("astronaut.png", "chelsea.png", "coffee.png"),
                (("astronaut.png", "public domain; NASA"), ("chelsea.png", "CC0-1.0; Stefan van der Walt"),
                 ("coffee.png", "CC0-1.0; Rachel Michetti")), "eval"),
    PhotoSource("sklearn", "pypi", "scikit-learn", ">=1.3", "sklearn/datasets/images", ("china.jpg", "flower.jpg"),
                (("china.jpg", "CC-BY-2.0; danielbuechele (Flickr)"), ("flower.jpg", "CC-BY-2.0; vultilion (Flickr)")), "eval"),
)
"""Every source; none is an OpenCV sample or documentation image (those are kept for evaluation elsewhere)."""


def _source_dir(source: PhotoSource, roots: Sequence[PathLike]) -> Path:
    if source.registry == "pypi":
        top, _, sub = source.directory.partition("/")
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"photo source {source.name!r} needs the PyPI package {source.package} (pip install {source.package})")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    for root in roots:
        folder = Path(root) / source.directory.lstrip("/")
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"photo source {source.name!r} needs the Debian package {source.package} {source.version} "
        f"(apt-get install {source.package}, or apt-get download + dpkg-deb -x into a folder given as --root); "
        f"looked for {source.directory} under {', '.join(map(str, roots))}"
    )


def find_photos(sources: Iterable[PhotoSource] = CATALOGUE, roots: Sequence[PathLike] = ("/",)) -> list[Photo]:
    """The catalogue's photographs present on this machine, in a fixed order; a missing package is an
    error naming how to install it, a missing file one naming the file."""
    photos = []
    for source in sources:
        folder = _source_dir(source, roots)
        for pattern in source.globs:
            matches = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise FileNotFoundError(f"photo source {source.name!r}: no file {pattern} in {folder}")
            photos += [Photo(source, p) for p in matches]
    return photos


def is_validation(photo_name: str) -> bool:
    """Held-out validation file of a training source: ``crc32(name) % 10 == 0`` (about one in ten)."""
    return zlib.crc32(photo_name.encode()) % 10 == 0


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`check_disjoint` compares: the file's SHA-256, the picture's aspect ratio and its
    32x32 grey thumbnail (zero mean, unit norm)."""

    sha256: str
    aspect: float
    thumb: np.ndarray

    def same_picture(self, other: "Fingerprint", min_correlation: float = 0.95) -> bool:
        """The same file, or the same picture resized / re-encoded (aspect within 2 %, thumbnails correlated)."""
        if self.sha256 == other.sha256:
            return True
        return abs(self.aspect / other.aspect - 1) < 0.02 and float(self.thumb @ other.thumb) >= min_correlation


def fingerprint(path: PathLike) -> Fingerprint:
    """:class:`Fingerprint` of an image file (an unreadable file is a ``ValueError`` naming it)."""
    from PIL import Image

    data = Path(path).read_bytes()
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.draft("L", (64, 64))  # JPEG: decode at a reduced size, much faster
            thumb = np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR, reducing_gap=2.0), dtype=np.float64).ravel()
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    thumb = thumb - thumb.mean()
    return Fingerprint(hashlib.sha256(data).hexdigest(), w / h, thumb / max(np.linalg.norm(thumb), 1e-9))


def check_disjoint(train: Sequence[PathLike], evaluation: Sequence[PathLike]) -> None:
    """Raise ``ValueError`` when a training image is an evaluation image: the same file (SHA-256) or the
    same picture (:meth:`Fingerprint.same_picture`: a resized or re-encoded copy)."""
    eval_prints = [(Path(p), fingerprint(p)) for p in evaluation]
    for path in train:
        mine = fingerprint(path)
        for eval_path, theirs in eval_prints:
            if mine.same_picture(theirs):
                kind = "the same file as" if mine.sha256 == theirs.sha256 else "the same picture as"
                raise ValueError(f"training image {path} is {kind} evaluation image {eval_path}: the image set overlaps the evaluation set")


def _gradient_energy(arr: np.ndarray) -> np.ndarray:
    """``|d/dy| + |d/dx|`` of the grey image, shape ``[h - 1, w - 1]``: how textured each pixel's neighbourhood is."""
    grey = arr.astype(np.float32).mean(axis=2)
    return np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]


def _texture_window(arr: np.ndarray, crop: int, positions: int = 7) -> tuple[int, int]:
    """Top-left corner of the ``crop x crop`` window (of ``positions`` along the long side) with most gradient energy."""
    h, w = arr.shape[:2]
    energy = _gradient_energy(arr)
    best, corner = -1.0, (0, 0)
    for k in range(positions):
        y = (h - crop) * k // max(1, positions - 1) if h > w else (h - crop) // 2
        x = (w - crop) * k // max(1, positions - 1) if w >= h else (w - crop) // 2
        score = float(energy[y : y + crop - 1, x : x + crop - 1].mean())
        if score > best:
            best, corner = score, (y, x)
    return corner


def _grid_windows(arr: np.ndarray, crop: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``count`` non-overlapping ``crop x crop`` grid windows with most gradient energy, most first
    (the grid is centred; a photo with fewer windows gives them all)."""
    h, w = arr.shape[:2]
    energy = _gradient_energy(arr)
    top, left = (h % crop) // 2, (w % crop) // 2
    corners = [(top + i * crop, left + j * crop) for i in range(h // crop) for j in range(w // crop)]
    scores = [float(energy[y : y + crop - 1, x : x + crop - 1].mean()) for y, x in corners]
    order = sorted(range(len(corners)), key=lambda k: -scores[k])
    return [corners[k] for k in order[:count]]


def _prepare(path: Path, kind: str, factor: int, crop: int, eval_side: int, crops: int = 1) -> list:
    """The processed PIL images of one photo (see the module docstring), each with a description of the processing:
    one image, or for a training photo of a source with ``crops > 1`` its ``crops`` most-textured grid windows."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    if kind == "eval":
        if min(w, h) <= 2 * eval_side:  # the scikit-image / scikit-learn photos (300-512 px)
            return [(im, "as shipped")]
        scale = eval_side / min(w, h)
        im = im.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
        w, h = im.size
        cw, ch = min(w, eval_side * 3 // 2), min(h, eval_side * 3 // 2)
        left, top = (w - cw) // 2, (h - ch) // 2
        return [(im.crop((left, top, left + cw, top + ch)), f"Lanczos to short side {eval_side}, centre {cw}x{ch}")]
    im = im.resize((w // factor, h // factor), Image.LANCZOS)
    w, h = im.size
    side = min(crop, w, h)
    if kind == "train" and crops > 1:
        return [(im.crop((x, y, x + side, y + side)), f"Lanczos /{factor}, grid window {rank + 1} of the {crops} most textured, "
                 f"{side}x{side} at ({x}, {y})") for rank, (y, x) in enumerate(_grid_windows(np.asarray(im), side, crops))]
    if kind == "train":
        y, x = _texture_window(np.asarray(im), side)
    else:
        y, x = (h - side) // 2, (w - side) // 2
    how = "most-textured" if kind == "train" else "centre"
    return [(im.crop((x, y, x + side, y + side)), f"Lanczos /{factor}, {how} {side}x{side} at ({x}, {y})")]


def build_sr_data(out_dir: PathLike, roots: Sequence[PathLike] = ("/",), images: Optional[PathLike] = None, factor: int = 2,
                  crop: int = 320, eval_side: int = 384, sources: Sequence[PhotoSource] = CATALOGUE,
                  extra_train: Sequence[str] = ()) -> dict:
    """Write ``train/``, ``val/`` and ``eval/`` (lossless WebP), ``manifest.json`` (every file: source,
    package, version, licence, original path, SHA-256, processing) and ``LICENSES.md`` into ``out_dir``.

    ``images``: a folder of the user's own photos to train on instead of the catalogue's training
    sources (the files :func:`is_validation` picks held out, or the last one if it picks none). Refused, before anything is written,
    when a training or validation image overlaps the evaluation set (:func:`check_disjoint`).
    ``extra_train``: names of ``extra`` sources to train (and validate) on as well; not with ``images``.
    """
    from .readers import image_files

    for name, value, low in (("factor", factor, 1), ("crop", crop, 32), ("eval_side", eval_side, 32)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    extras = {s.name: s for s in sources if s.role == "extra"}
    if unknown := [n for n in extra_train if n not in extras]:
        raise ValueError(f"extra_train: unknown source(s) {unknown}; expected some of {sorted(extras)}")
    if extra_train and images is not None:
        raise ValueError("extra_train: adds catalogue photos to the catalogue's training set; not with images (your own photos)")
    used_extras = [extras[n] for n in dict.fromkeys(extra_train)]
    eval_photos = find_photos([s for s in sources if s.role == "eval"], roots)
    if images is not None:
        own = PhotoSource("own", "local", "-", "-", str(images), ("*",), (("*", "the user's own"),), "train")
        train_photos = [Photo(own, p) for p in image_files(Path(images))]
    else:
        train_photos = find_photos([s for s in sources if s.role == "train"] + used_extras, roots)
    check_disjoint([p.path for p in train_photos], [p.path for p in eval_photos])
    out_dir = Path(out_dir)
    records, counts, total_bytes = [], {"train": 0, "val": 0, "eval": 0}, 0
    held_out = {p.name for p in train_photos if is_validation(p.name)} or {train_photos[-1].name} if len(train_photos) > 1 else set()
    jobs = [("eval", p) for p in eval_photos] + [("val" if p.name in held_out else "train", p) for p in train_photos]
    for kind, photo in jobs:
        prepared = _prepare(photo.path, kind, factor, crop, eval_side, photo.source.crops)
        sha256 = hashlib.sha256(photo.path.read_bytes()).hexdigest()
        for index, (image, how) in enumerate(prepared):
            target = out_dir / kind / (f"{photo.name}_{index}.webp" if len(prepared) > 1 else f"{photo.name}.webp")
            with atomic_path(target) as tmp:
                image.save(tmp, format="WEBP", lossless=True, method=4)
            size = target.stat().st_size
            total_bytes += size
            counts[kind] += 1
            records.append({
                "file": f"{kind}/{target.name}", "set": kind, "source": photo.source.name, "registry": photo.source.registry,
                "package": photo.source.package, "version": photo.source.version, "licence": photo.licence,
                "original": str(photo.path), "sha256": sha256, "processing": how, "size": list(image.size), "bytes": size,
            })
    summary = {
        "out": str(out_dir), "counts": counts, "megabytes": round(total_bytes / 2**20, 2), "factor": factor, "crop": crop,
        "eval_side": eval_side,
        "sources": [{k: v for k, v in asdict(s).items() if k != "licences"} for s in sources
                    if s.role == "eval" or (images is None and (s.role == "train" or s in used_extras))],
        "train_from": str(images) if images is not None else "catalogue",
    }
    write_json(out_dir / "manifest.json", {**summary, "files": records})
    lines = ["# Licences of the photographs in this folder", "", "| file | source package | licence; copyright |", "|---|---|---|"]
    lines += [f"| {r['file']} | {r['registry']}: {r['package']} {r['version']} | {r['licence']} |" for r in records]
    write_text(out_dir / "LICENSES.md", "\n".join(lines) + "\n")
    return summary
