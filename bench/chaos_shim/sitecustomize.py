"""A full disk, for bench/chaos_soak.py, without root: while the file named by CHAOS_SOAK_DISK_FULL
exists, every file the local store creates fails with OSError(ENOSPC), as on a full filesystem.

The soak puts this folder first on PYTHONPATH of the Ray cluster it starts and of its drivers, so every
process (driver and actors) imports it at start-up. It does nothing without the variable. It wraps
`pipeline.storage.local._create_in_folder` (where every new file of a LocalStore is opened: temp files of
whole-object writes, markers, uploads) once that module is imported; reads are not affected.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.util
import os
import sys

_FLAG = os.environ.get("CHAOS_SOAK_DISK_FULL")
_TARGET = "pipeline.storage.local"


def _patch(module) -> None:
    create = module._create_in_folder

    def create_unless_full(path, *args, **kwargs):
        if os.path.exists(_FLAG):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return create(path, *args, **kwargs)

    module._create_in_folder = create_unless_full


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module once, then patch it as it loads
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_and_patch(module):
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _FLAG:
    sys.meta_path.insert(0, _PatchOnImport())
