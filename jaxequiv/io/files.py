"""Atomic publication of files and folders, and the lock that keeps two writers of one output apart.

Readers of an artefact see the old complete version or the new complete one, never a mix:

* a file is written under a temporary name in its folder, flushed to disk and ``os.replace``-d onto its path
  (:func:`atomic_path`, :func:`write_text`, :func:`write_json`);
* a set of files is built in a folder beside the target and published with one rename (:func:`publishing` for
  a fresh build, :func:`publish` for a build folder kept across runs such as ``<out>.partial``). Replacing an
  existing folder exchanges the two in one step (Linux ``renameat2(RENAME_EXCHANGE)``); where the file system
  cannot, the old folder is renamed aside first, and if the writer dies between the two renames the next
  writer puts the old folder back.

Every folder publication holds an advisory lock (``fcntl.flock`` on ``.<name>.lock`` beside the target, removed
on release), so a second concurrent writer of the same output fails at once with :class:`OutputLockedError`.
Under the lock, the temporary folders of writers that died are removed. Files and folders are created with
modes 0666 / 0777, so the umask (and default ACLs) set their permissions, as for any ``open`` or ``mkdir``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text", "write_json", "publishing", "publish", "check_output", "output_lock",
           "OutputLockedError"]

_TMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}(\.[^.]*)?")  # names of our temporary files and folders
_held = threading.local()  # lock files this thread holds -> nesting depth


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


def _window(stage: str) -> None:
    """Called inside a publication's critical window (``stage``: "built", "swapped"); a no-op that the fault
    tests replace to kill the process there."""


def _sibling(target: str, kind: str, suffix: str = "") -> str:
    """A hidden name beside ``target``: ``.<name>.<kind>`` (lock) or ``.<name>.<kind>-<8 hex><suffix>``."""
    parent, name = os.path.split(target)
    if kind == "lock":
        return os.path.join(parent, f".{name}.lock")
    return os.path.join(parent, f".{name}.{kind}-{secrets.token_hex(4)}{suffix}")


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno is not None:
            e.filename = path  # fsync's error (e.g. a full disk) names no file
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds, flush it to disk and
    ``os.replace`` it onto ``path``; when it raises, delete it and leave ``path`` untouched.

    The temporary name keeps ``path``'s extension, so writers that infer a format from it (matplotlib,
    ``np.save``) behave. The file is created with mode 0666 minus the umask, like ``open(path, "w")``.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        tmp = _sibling(path, "tmp", os.path.splitext(path)[1])
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            e.filename = path  # a full disk or a quota names the artefact, not its temporary name
        raise
    _fsync(os.path.dirname(path), directory=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``dump_kwargs`` go to :func:`json.dump`, default indent 1)."""
    dump_kwargs.setdefault("indent", 1)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)


# -- the lock ----------------------------------------------------------------------------------------------------
def _acquire(lock: str, target: str) -> int:
    """Open and flock ``lock`` (non-blocking); retry if a releasing holder unlinked it under us."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise OutputLockedError(
                f"{target} is being written by another process{f' (pid {holder})' if holder else ''}; "
                "wait for it to finish or choose another output") from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold the advisory lock of output ``target`` (a file or folder path) for the block.

    Re-entrant within a thread; another thread or process that asks for it meanwhile gets
    :class:`OutputLockedError` at once. The lock file ``.<name>.lock`` beside ``target`` is removed on release.
    """
    lock = _sibling(_resolve(target), "lock")
    held = _held.__dict__.setdefault("depth", {})
    if lock in held:
        held[lock] += 1
        try:
            yield
        finally:
            held[lock] -= 1
        return
    _makedirs(os.path.dirname(lock))
    fd = _acquire(lock, os.fspath(target))
    held[lock] = 1
    try:
        yield
    finally:
        del held[lock]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


# -- folder publication ------------------------------------------------------------------------------------------
def _resolve(target: str | os.PathLike) -> str:
    """Absolute path of ``target``; a symlink is followed, so the folder it points to is what gets replaced."""
    target = os.path.abspath(os.fspath(target))
    return os.path.realpath(target) if os.path.islink(target) else target


def _recover(target: str, keep: str | None = None) -> None:
    """Under the lock: delete the temporary folders of dead writers beside ``target`` (all but ``keep``, this
    writer's build); if one died between the two renames of a fallback swap (``target`` missing, its old folder
    aside), put the old folder back."""
    parent, name = os.path.split(target)
    tmp = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[0-9a-f]{{8}}")
    stale = sorted(e for e in os.listdir(parent) if tmp.fullmatch(e) and os.path.join(parent, e) != keep)
    old = [e for e in stale if e.startswith(f".{name}.old-")]
    if old and not os.path.lexists(target):
        os.rename(os.path.join(parent, old[0]), target)
        stale.remove(old[0])
    for e in stale:
        path = os.path.join(parent, e)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def check_output(target: str | os.PathLike, *, overwrite: bool = False, marker: str | None = None) -> bool:
    """Whether publishing a folder at ``target`` would replace one; raises if it may not (see :func:`publish`).
    Commands call it before their work, to fail at once rather than after it."""
    target = _resolve(target)
    parent = os.path.dirname(target)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{parent} is not a folder, so {target} cannot be written below it; choose "
                                 "another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), parent)
    if not os.path.lexists(target):
        return False
    if not os.path.isdir(target):
        raise NotADirectoryError(f"{target} is a file, but this output is a folder; choose another path or "
                                 "remove the file")
    if not os.listdir(target):
        return False  # an empty folder is replaced by the rename itself
    if not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite (overwrite=True in Python) to replace "
                              "it, or choose another output")
    if marker is not None and not os.path.exists(os.path.join(target, marker)):
        raise FileExistsError(f"refusing to replace {target}: it has no {marker}, so it is not an output of this "
                              "kind; choose another output or remove that folder yourself")
    return True


def _sync_tree(root: str) -> None:
    """Flush every file and folder under ``root`` to disk; delete temporary files left by killed writers."""
    for folder, dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            if _TMP.fullmatch(f):
                os.unlink(path)
            elif not os.path.islink(path):
                _fsync(path)
        for d in dirs:
            _fsync(os.path.join(folder, d), directory=True)
    _fsync(root, directory=True)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _swap(new: str, target: str) -> None:
    """Put folder ``new`` at ``target`` and delete the folder that was there."""
    if _exchange(new, target):
        _window("swapped")
        shutil.rmtree(new)  # now the old folder
        return
    old = _sibling(target, "old")
    os.rename(target, old)
    _window("swapped")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def publish(build: str | os.PathLike, target: str | os.PathLike, *, overwrite: bool = False,
            marker: str | None = None) -> str:
    """Move the finished folder ``build`` to ``target`` in one step; return ``target``'s absolute path.

    Everything under ``build`` is flushed to disk first. ``build`` must be on ``target``'s file system
    (beside it, e.g. ``<target>.partial``).

    Args:
      overwrite: replace an existing non-empty folder at ``target`` (an empty one is always replaced).
      marker: a file every output of this kind holds (e.g. ``"config.json"``); a folder without it is never
        replaced, so a mistyped path cannot delete unrelated data.

    Raises:
      FileExistsError: ``target`` exists and may not be replaced. NotADirectoryError: ``target`` is a file.
      OutputLockedError: another process is writing ``target``.
    """
    build, target = os.path.abspath(os.fspath(build)), _resolve(target)
    with output_lock(target):
        _recover(target, keep=build)
        replacing = check_output(target, overwrite=overwrite, marker=marker)
        _sync_tree(build)
        _window("built")
        if replacing:
            if not re.fullmatch(rf"\.{re.escape(os.path.basename(target))}\.tmp-[0-9a-f]{{8}}",
                                os.path.basename(build)):
                staged = _sibling(target, "tmp")  # a named build (<out>.partial) must not receive the old folder
                os.rename(build, staged)
                build = staged
            _swap(build, target)
        else:
            os.rename(build, target)
        _fsync(os.path.dirname(target), directory=True)
    return target


def _makedirs(folder: str) -> list[str]:
    """``os.makedirs(folder)``, with a clear error if a part of the path is a file; returns the folders it
    created, outermost first."""
    missing = []
    while not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise NotADirectoryError(f"{folder} is not a folder, so nothing can be written below it; choose "
                                     "another output path")
        missing.append(folder)
        folder = os.path.dirname(folder)
    for f in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(f, 0o777)
    return missing[::-1]


def _holds_files(folder: str) -> bool:
    return any(files for _, _, files in os.walk(folder))


@contextlib.contextmanager
def publishing(target: str | os.PathLike, *, overwrite: bool = False, marker: str | None = None,
               resumable: bool = False) -> Iterator[Path]:
    """Build an output folder and publish it at ``target`` in one step when the block succeeds.

    Yields the build folder: a fresh hidden folder beside ``target``, deleted if the block raises; or, with
    ``resumable``, ``<target>.partial``, which is kept when the block raises (unless it holds no file) so that
    a rerun continues from it. The lock is held for the whole block, and whether ``target`` may be replaced
    (``overwrite``, ``marker``: see :func:`publish`) is checked on entry, before any work. Folders created for ``target``'s
    parent are removed again if the block fails and leaves them empty.
    """
    target = _resolve(target)
    created = _makedirs(os.path.dirname(target))
    try:
        with output_lock(target):
            _recover(target)
            check_output(target, overwrite=overwrite, marker=marker)
            if resumable:
                build = target + ".partial"
                os.makedirs(build, exist_ok=True)
            else:
                build = _sibling(target, "tmp")
                os.mkdir(build, 0o777)
            try:
                yield Path(build)
                publish(build, target, overwrite=overwrite, marker=marker)
            except BaseException:
                if not resumable or not _holds_files(build):
                    shutil.rmtree(build, ignore_errors=True)
                raise
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
