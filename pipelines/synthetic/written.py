"""Which files of a synthetic dataset folder `fitloop synth` wrote, so that ``--overwrite`` removes those and no
other: a user's files put into the folder afterwards (a parsing label folder beside LSP's images, say, the layout
the adapters' ``labels_dir`` option reads) are refused, never deleted, as `preprocess` refuses a shard folder with
files it did not write.

Every dataset folder lists its files in `WRITTEN_LIST` (``fitloop_synth_files.txt``: one path per line, relative to
the folder, POSIX, sorted; the list and ``fitloop_synth.json`` included), written once the dataset is complete.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

WRITTEN_LIST = "fitloop_synth_files.txt"


def record_written(root: Path, also: tuple[str, ...] = ()) -> Path:
    """Write `WRITTEN_LIST` into ``root``: every file under it now, itself and ``also`` (files written after it)."""
    files = set(also) | {WRITTEN_LIST}
    for folder, _, names in os.walk(root):
        files.update((Path(folder).relative_to(root) / name).as_posix() for name in names)
    path = root / WRITTEN_LIST
    path.write_text("".join(f"{name}\n" for name in sorted(files)), encoding="utf-8")
    return path


def written_files(root: Path) -> set[str] | None:
    """The files ``root``'s `WRITTEN_LIST` names, or None when it has none (a folder of an older fitloop synth)."""
    try:
        text = (root / WRITTEN_LIST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    names = {PurePosixPath(line) for line in text.splitlines() if line}
    # only paths inside the folder: an edited list must not reach outside it
    return {str(name) for name in names if not name.is_absolute() and ".." not in name.parts}


def foreign_entries(root: Path, written: set[str]) -> list[str]:
    """What ``root`` holds beyond the files ``written`` (relative POSIX paths, folders with a trailing '/', sorted):
    a file not in the list, or a folder or link that holds none of its files (not looked into)."""
    ours = {str(parent) for name in written for parent in PurePosixPath(name).parents if str(parent) != "."}
    found = []
    for folder, folders, names in os.walk(root):
        here = Path(folder).relative_to(root)
        kept = []
        for name in sorted(folders):
            relative = (here / name).as_posix()
            if relative in ours and not (Path(folder) / name).is_symlink():
                kept.append(name)
            else:
                found.append(relative + "/")
        folders[:] = kept
        found += [relative for name in names if (relative := (here / name).as_posix()) not in written]
    return sorted(found)


def remove_written(root: Path, written: set[str]) -> None:
    """Remove the files ``written`` from ``root``, then its folders that this leaves empty, then ``root`` itself
    (an OSError if something else is in it: the caller checks `foreign_entries` first)."""
    for name in written:
        (root / name).unlink(missing_ok=True)
    folders = {parent for name in written for parent in PurePosixPath(name).parents if str(parent) != "."}
    for folder in sorted(folders, key=lambda f: len(PurePosixPath(f).parts), reverse=True):
        try:
            (root / folder).rmdir()
        except FileNotFoundError:
            pass
    root.rmdir()
