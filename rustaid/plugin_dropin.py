"""Drop-in plugins: the safety checks a file or package folder of the plugins folder
must pass before it is imported, and importing it from its source only.

A drop-in is loaded only if the plugins folder and every file and folder of the plugin
are not writable by group or others and are owned by root or the daemon's user; a
package may hold no symbolic links. Drop-ins are compiled from source every time (never
from `__pycache__`), so a reload sees the file as it is and planted bytecode never runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import stat
import sys
import types
from pathlib import Path

from rustaid.errors import PermissionDenied

__all__ = [
    "check_drop_in",
    "forget_module",
    "import_drop_in",
    "remove_source_finders",
]


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles a drop-in from its source every time.

    Never reads or writes `__pycache__`: a reload must see the file as it is now (a
    cached .pyc is only checked against the source's mtime in whole seconds and its
    size), and bytecode planted next to a checked source must not run.
    """

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        source = self.get_data(path)
        code: types.CodeType = compile(source, path, "exec", dont_inherit=True)
        return code


def check_drop_in(plugins_dir: Path, path: Path) -> None:
    """Refuse drop-ins that another user could have written (DESIGN section 4)."""
    problems = [_insecure(plugins_dir)]
    if path.is_dir():
        problems.append(_insecure(path))
        for root, dirs, files in os.walk(path):
            problems.extend(_insecure(Path(root, n)) for n in sorted(dirs + files))
            # os.walk does not enter linked folders, so what they hold would go
            # unchecked (another user's files); links are refused instead.
            problems.extend(_linked(Path(root, n)) for n in sorted(dirs + files))
    else:
        problems.append(_insecure(path))
    found = [p for p in problems if p]
    if found:
        raise PermissionDenied(
            f"refusing to load drop-in plugin {path}: {found[0]}", reason="PLUGIN_INSECURE"
        )


def _linked(path: Path) -> str:
    if not path.is_symlink():
        return ""
    return (
        f"{path} is a symbolic link; a plugin package may not contain links, as what "
        f"they lead to is not checked: replace it with the files themselves"
    )


def _insecure(path: Path) -> str:
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    writers = [w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit]
    if writers:
        return (
            f"{path} is writable by {' and '.join(writers)} (mode {mode:o}); "
            f"fix it with: chmod go-w {path}"
        )
    own = os.geteuid()
    if st.st_uid not in (0, own):
        return (
            f"{path} is owned by uid {st.st_uid}, not by root or the daemon's user "
            f"(uid {own}); fix it with: chown {own} {path}"
        )
    return ""


def import_drop_in(module_name: str, path: Path) -> types.ModuleType:
    """Import the drop-in at `path` (a .py file or a package folder) as `module_name`,
    from source only."""
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise ImportError(f"{path} is a folder without __init__.py")
        spec = importlib.util.spec_from_file_location(
            module_name,
            init,
            loader=_SourceOnlyLoader(module_name, str(init)),
            submodule_search_locations=[str(path)],
        )
    else:
        if not path.is_file():
            raise FileNotFoundError(f"{path} no longer exists")
        spec = importlib.util.spec_from_file_location(
            module_name, path, loader=_SourceOnlyLoader(module_name, str(path))
        )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    forget_module(module_name)
    if path.is_dir():
        _install_source_finders(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        forget_module(module_name)
        raise
    return module


def forget_module(module_name: str) -> None:
    """Drop a drop-in's private module and its submodules from sys.modules."""
    prefix = module_name + "."
    for name in [n for n in sys.modules if n == module_name or n.startswith(prefix)]:
        del sys.modules[name]


def _install_source_finders(package: Path) -> None:
    """Make the submodules of a drop-in package load like its __init__.py: from source
    only (see _SourceOnlyLoader), never from bytecode found in __pycache__ or a
    sourceless .pyc, so that a reload re-reads every file of the package."""
    loaders: list[tuple[type[importlib.abc.Loader], list[str]]] = [
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES),
    ]
    remove_source_finders(package)
    for root, dirs, _files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        sys.path_importer_cache[root] = importlib.machinery.FileFinder(root, *loaders)


def remove_source_finders(path: Path) -> None:
    prefix = str(path)
    for key in [k for k in sys.path_importer_cache if k == prefix or k.startswith(prefix + os.sep)]:
        del sys.path_importer_cache[key]
