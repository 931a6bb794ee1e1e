"""Split manifests: which items are in each data split of a run, to check a later run uses the same data.

A split is a list of file paths (each item is its path, as given, and its file's content hash) or
an array, tensor or dataset (each item is its position and its content hash, from
:func:`deepscope._hashing.item_hashes`). A split's digest is the sha256 of its items' hashes in
order, so the same items in another order give another digest; file names do not enter it. The
manifest's digest combines the splits' names and digests, in name order.

Example:
    >>> import numpy as np
    >>> manifest = split_manifest({"train": np.arange(6).reshape(3, 2), "test": np.arange(4).reshape(2, 2)})
    >>> manifest.duplicates
    {('train', 'test'): 2}
    >>> manifest.verify({"train": np.arange(6).reshape(3, 2), "test": np.zeros((2, 2))}).identical
    False

No torch import: tensors convert through numpy in ``_hashing``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepscope._hashing import duplicates_across, item_hashes
from deepscope._tags import TAGS
from deepscope.errors import SchemaVersionError, UnknownNameError
from deepscope.store import RunReader, RunWriter

__all__ = ["ManifestCheck", "ManifestSplit", "SplitDiff", "SplitManifest", "split_manifest", "verify_files"]

_SCHEMA_VERSION = 1  # of the meta values below TAGS.MANIFEST
_EXAMPLES = 5  # examples kept per kind of difference


def _digest(hashes: Sequence[str]) -> str:
    """sha256 of the items' hashes in order (order matters; paths do not)."""
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).hexdigest()


@dataclass(frozen=True, slots=True)
class ManifestSplit:
    """One split: its items' content hashes (hex) in order, their paths (None for an index split) and digest."""

    hashes: tuple[str, ...] = field(repr=False)
    paths: tuple[str, ...] | None = field(default=None, repr=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.hashes))

    @property
    def count(self) -> int:
        """Number of items."""
        return len(self.hashes)


def _split(items: Any) -> ManifestSplit:
    """A split of file paths (kept as given, hashed relative to the current folder) or of indexed items."""
    if isinstance(items, (list, tuple)) and all(isinstance(item, (str, os.PathLike)) for item in items):
        return ManifestSplit(tuple(h.hex() for h in item_hashes(items)), tuple(os.fspath(p) for p in items))
    return ManifestSplit(tuple(h.hex() for h in item_hashes(items)))  # raises TypeError for a single path


def _duplicates(splits: Mapping[str, ManifestSplit]) -> dict[tuple[str, str], int]:
    """``duplicates_across`` on the stored hashes: equal items have equal hash rows, so nothing is re-read."""
    rows = {
        name: np.frombuffer(bytes.fromhex("".join(s.hashes)), np.uint8).reshape(-1, 16) for name, s in splits.items()
    }
    return {pair: count for pair, (count, _) in duplicates_across(rows).items()}


@dataclass(frozen=True, slots=True)
class SplitDiff:
    """How one split differs from its manifest entry: counts, and up to 5 examples (paths or indices) of each."""

    name: str
    expected: ManifestSplit
    found: ManifestSplit | None  # None: an index split checked without its data
    added: int = 0
    removed: int = 0
    changed: int = 0  # same path, other content
    examples: Mapping[str, tuple[str | int, ...]] = field(default_factory=dict)  # "added"/"removed"/"changed"

    @property
    def identical(self) -> bool:
        """The same items in the same order (an unchecked split is not)."""
        return self.found is not None and self.found.digest == self.expected.digest and not self._differs()

    @property
    def reordered(self) -> bool:
        """The same items in another order: nothing added, removed or changed, yet the digest differs."""
        return self.found is not None and self.found.digest != self.expected.digest and not self._differs()

    def _differs(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        """One line, e.g. ``test: 2 changed (img_004.png, img_007.png), 1 removed (img_009.png)``."""
        n, short = f"{self.expected.count:,}", self.expected.digest[:8]
        if self.found is None:
            return f"{self.name}: not checkable without the data ({n} items identified by index; pass them to verify)"
        if self.identical:
            return f"{self.name}: identical ({n} items, digest {short}…)"
        if self.reordered:
            return f"{self.name}: reordered (the same {n} items; digest {short}… → {self.found.digest[:8]}…)"
        parts = []
        for kind in ("changed", "added", "removed"):
            count, shown = getattr(self, kind), self.examples.get(kind, ())
            if count:
                names = [f"#{e}" if isinstance(e, int) else e for e in shown] + ["…"] * (count > len(shown))
                parts.append(f"{count:,} {kind} ({', '.join(names)})")
        return f"{self.name}: {', '.join(parts)}"


def _extra(mine: Sequence[str], other: Sequence[str]) -> list[int]:
    """Positions of the keys of ``mine`` that ``other`` lacks, as multisets (a second copy is extra)."""
    spare = Counter(other)
    extra = []
    for i, key in enumerate(mine):
        if spare[key] > 0:
            spare[key] -= 1
        else:
            extra.append(i)
    return extra


def _diff(name: str, expected: ManifestSplit, found: ManifestSplit) -> SplitDiff:
    """Compare by path when both splits have paths, else by the multisets of content hashes."""
    old_ids: Sequence[str | int] = range(expected.count)
    new_ids: Sequence[str | int] = range(found.count)
    old, new = expected.hashes, found.hashes
    changed: list[str] = []
    if expected.paths is not None and found.paths is not None:
        old, new = expected.paths, found.paths
        old_ids, new_ids = old, new
        before: dict[str, str] = {}
        for path, digest in zip(expected.paths, expected.hashes, strict=True):
            before.setdefault(path, digest)
        changed = list(
            dict.fromkeys(p for p, h in zip(found.paths, found.hashes, strict=True) if before.get(p, h) != h)
        )
    added, removed = _extra(new, old), _extra(old, new)
    examples = {
        "added": tuple(new_ids[i] for i in added[:_EXAMPLES]),
        "removed": tuple(old_ids[i] for i in removed[:_EXAMPLES]),
        "changed": tuple(changed[:_EXAMPLES]),
    }
    return SplitDiff(name, expected, found, len(added), len(removed), len(changed), examples)


@dataclass(frozen=True, slots=True)
class ManifestCheck:
    """Data checked against a :class:`SplitManifest`: one :class:`SplitDiff` per split, and splits missing or new."""

    splits: tuple[SplitDiff, ...]
    missing: tuple[str, ...] = ()  # in the manifest, not in the data
    new: tuple[str, ...] = ()  # in the data, not in the manifest

    @property
    def identical(self) -> bool:
        """Every split of the manifest was checked and is identical, and no split is missing or new."""
        return not self.missing and not self.new and all(d.identical for d in self.splits)

    @property
    def unchecked(self) -> tuple[str, ...]:
        """Index splits that could not be checked without their data."""
        return tuple(d.name for d in self.splits if d.found is None)

    def summary(self) -> str:
        """A readable multi-line diff, one line per split."""
        differs = self.missing or self.new or any(d.found is not None and not d.identical for d in self.splits)
        head = "identical to the split manifest" if self.identical else "differs from the split manifest"
        if not differs and not self.identical:
            head = f"no difference found, but {len(self.unchecked)} splits could not be checked without their data"
        lines = [head, *(f"  {d.summary()}" for d in self.splits)]
        lines += [f"  {name}: missing (in the manifest, not in the data)" for name in self.missing]
        lines += [f"  {name}: new (not in the manifest)" for name in self.new]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SplitManifest:
    """The items of each split of a run, by path or index and content hash; see the module docstring.

    Attributes:
        splits: each split's :class:`ManifestSplit`, in the order given.
        duplicates: pairs of splits sharing items -> how many of the second's items are in the first.
    """

    splits: Mapping[str, ManifestSplit]
    duplicates: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 over the splits' names and digests, in name order (the order of the mapping does not matter)."""
        text = "".join(f"{name}\0{self.splits[name].digest}\n" for name in sorted(self.splits))
        return hashlib.sha256(text.encode()).hexdigest()

    def paths(self, name: str) -> list[str]:
        """The file paths of split ``name``, in order, as they were given (to load the same split again).

        Raises:
            UnknownNameError: the manifest has no split ``name``.
            ValueError: the split was an array or dataset, whose items have positions and hashes but no paths.
        """
        if name not in self.splits:
            raise UnknownNameError("split", name, self.splits)
        split = self.splits[name]
        if split.paths is None:
            raise ValueError(
                f"split {name!r} was given as an array or dataset: its items are identified by position and content "
                "hash, not by path, so there are no paths to give back (verify the data with SplitManifest.verify)"
            )
        return list(split.paths)

    def verify(self, splits: Mapping[str, Any]) -> ManifestCheck:
        """Check new data (splits given as to :func:`split_manifest`) against this manifest."""
        found = {name: _split(items) for name, items in _checked(splits).items()}
        return ManifestCheck(
            tuple(_diff(name, split, found[name]) for name, split in self.splits.items() if name in found),
            missing=tuple(name for name in self.splits if name not in found),
            new=tuple(name for name in found if name not in self.splits),
        )

    def summary(self) -> str:
        """The splits, their sizes and digests, and the items shared between splits."""
        lines = [f"split manifest {self.digest[:8]}…, {len(self.splits)} splits"]
        for name, split in self.splits.items():
            kind = "files" if split.paths is not None else "items by index"
            lines.append(f"  {name}: {split.count:,} {kind}, digest {split.digest[:8]}…")
        lines += [f"  {count:,} {b} items are in {a}" for (a, b), count in self.duplicates.items()]
        return "\n".join(lines)

    def record(self, run_dir: str | os.PathLike[str]) -> Path:
        """Store the manifest in a run's meta (``repro/manifest/`` keys), creating the run if needed.

        The run keeps its status and library versions. Raises :class:`~deepscope.errors.RunLockedError`
        while a live writer records the run.
        """
        try:
            with RunReader(run_dir) as reader:
                status = "running" if reader.info.status == "interrupted" else reader.info.status
        except FileNotFoundError:
            status = "finished"
        with RunWriter(run_dir) as writer:  # reopened without versions: the run keeps its own
            writer.set_status(status)  # kept when the block ends
            writer.set_meta(f"{TAGS.MANIFEST}/schema_version", _SCHEMA_VERSION)
            writer.set_meta(f"{TAGS.MANIFEST}/splits", list(self.splits))
            writer.set_meta(f"{TAGS.MANIFEST}/digest", self.digest)
            for name, split in self.splits.items():
                paths = {} if split.paths is None else {"paths": list(split.paths)}
                entry = {"count": split.count, "digest": split.digest, "hashes": list(split.hashes), **paths}
                writer.set_meta(f"{TAGS.MANIFEST}/split/{name}", entry)
        return Path(run_dir)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> SplitManifest:
        """The manifest recorded in a run.

        Raises:
            FileNotFoundError: ``run_dir`` holds no run.
            ValueError: the run holds no split manifest, or its stored digests disagree with its hashes.
            SchemaVersionError: the manifest was written by a newer deepscope.
        """
        with RunReader(run_dir) as reader:
            return cls.from_meta(reader.meta(), where=f"the run in {run_dir}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, where: str = "the run") -> SplitManifest:
        """The manifest held in a run's meta (:meth:`RunReader.meta`); ``where`` names the run in errors."""
        if f"{TAGS.MANIFEST}/splits" not in meta:
            raise ValueError(f"{where} holds no split manifest; record one with split_manifest(splits).record(run_dir)")
        version = meta.get(f"{TAGS.MANIFEST}/schema_version")
        if version != _SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the split manifest of {where} has schema version {version}, not {_SCHEMA_VERSION}"
            )
        splits = {}
        for name in meta[f"{TAGS.MANIFEST}/splits"]:
            entry = meta[f"{TAGS.MANIFEST}/split/{name}"]
            paths = entry.get("paths")
            splits[name] = ManifestSplit(tuple(entry["hashes"]), None if paths is None else tuple(paths))
            if splits[name].digest != entry["digest"]:
                raise ValueError(
                    f"the split manifest of {where} is damaged: split {name!r}'s digest disagrees with its hashes"
                )
        manifest = cls(splits, _duplicates(splits))
        if manifest.digest != meta[f"{TAGS.MANIFEST}/digest"]:
            raise ValueError(f"the split manifest of {where} is damaged: its digest disagrees with its splits")
        return manifest


def _checked(splits: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(splits, Mapping) or not splits:
        raise TypeError(f"splits must be a non-empty mapping of split name -> items, got {type(splits).__name__}")
    bad = [name for name in splits if not isinstance(name, str) or not name]
    if bad:
        raise TypeError(f"split names must be non-empty strings, got {bad!r}")
    return splits


def split_manifest(splits: Mapping[str, Any]) -> SplitManifest:
    """Record which items are in each split: a list of file paths, or an array, tensor or dataset per split.

    Args:
        splits: split name -> items. File paths are kept as given (relative ones stay relative, and are
            read relative to the current folder); other splits are identified by index.

    Raises:
        TypeError: ``splits`` is not a non-empty mapping, or a split is a single path instead of a list.
        FileNotFoundError: a listed file does not exist.
    """
    entries = {name: _split(items) for name, items in _checked(splits).items()}
    return SplitManifest(entries, _duplicates(entries))


def verify_files(manifest: SplitManifest, base: str | os.PathLike[str] | None = None) -> ManifestCheck:
    """Re-hash the files of the manifest's path splits where they are now; a missing file counts as removed.

    Relative paths are resolved against ``base`` (default: the current folder). Index splits cannot be
    checked without their data: they are listed in :attr:`ManifestCheck.unchecked`.
    """
    root = Path.cwd() if base is None else Path(base)
    diffs = []
    for name, split in manifest.splits.items():
        if split.paths is None:
            diffs.append(SplitDiff(name, split, None))
            continue
        present = [p for p in split.paths if (root / p).is_file()]
        hashes = item_hashes([root / p for p in present])
        diffs.append(_diff(name, split, ManifestSplit(tuple(h.hex() for h in hashes), tuple(present))))
    return ManifestCheck(tuple(diffs))
