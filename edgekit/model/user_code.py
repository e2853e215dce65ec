"""The user's Python code a model needs: the factory --arch names, the modules --code names, and
the unpickler that finds a pickled model's classes in them. Importing runs that code, which the
user asked for by naming it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import types
from pathlib import Path

from edgekit.errors import EdgekitError


def build_arch(arch: str):
    import torch

    target, sep, factory_name = arch.rpartition(":")
    if not sep or not target or not factory_name.isidentifier():
        raise EdgekitError(
            f"Cannot read --arch {arch!r}. Write it as `package.module:Factory` or "
            "`path/to/file.py:Factory`, where Factory builds the model with no arguments."
        )
    module = import_code(target, flag="--arch")
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise EdgekitError(
            f"--arch {arch}: {target} has no class or function named {factory_name!r}. "
            f"Check the spelling; it must be defined at the top level of {target}."
        )
    try:
        model = factory()
    except Exception as exc:
        raise EdgekitError(
            f"--arch {arch}: calling {factory_name}() failed ({type(exc).__name__}: {exc}). "
            "The factory must build the model with no arguments; wrap it in a function that "
            "passes the settings the weights were trained with."
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise EdgekitError(
            f"--arch {arch}: {factory_name}() returned a {type(model).__name__}, not a "
            "torch.nn.Module. Point --arch at a class or function that returns the model."
        )
    return model


def import_code(target: str, flag: str = "--code") -> types.ModuleType:
    """Import a .py file path or a dotted module name; any failure becomes a clear error."""
    is_file = target.endswith(".py") or "/" in target or "\\" in target or Path(target).is_file()
    try:
        if is_file:
            return _import_file(Path(target), flag)
        if os.getcwd() not in sys.path:  # the `edgekit` console script leaves it out
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(target)
    except EdgekitError:
        raise
    except Exception as exc:
        what = "file" if is_file else "module"
        raise EdgekitError(
            f"{flag} {target}: importing the {what} failed ({type(exc).__name__}: {exc}). "
            "Check the path or module name, and that the packages it imports are installed "
            "(a module name must be importable from the current directory or installed)."
        ) from None


def _import_file(file: Path, flag: str) -> types.ModuleType:
    file = file.resolve()
    if not file.is_file():
        raise EdgekitError(f"{flag} {file}: there is no such file. Give the path of a .py file.")
    if file.suffix != ".py":
        raise EdgekitError(
            f"{flag} {file}: this is not a Python source file (.py). {flag} takes the .py file "
            "(or the module path) that defines the model's class; the weights themselves are the "
            "model file argument."
        )
    # Import under the file's own name (how a pickle made from `import mymodels` refers to it),
    # unless that name is taken; sibling imports work because its folder joins sys.path.
    name = file.stem if file.stem.isidentifier() else "edgekit_code"
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == file:
            return existing
        name = f"edgekit_code_{abs(hash(str(file)))}"
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def pickle_with_fallback(code_modules: list[types.ModuleType]) -> types.ModuleType:
    """A `pickle` stand-in for torch.load: classes pickled from a module that is not importable
    under that name (often `__main__`, or a script run from another folder) are looked up in the
    --code modules by class name."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module_name, name):
            try:
                return super().find_class(module_name, name)
            except (ImportError, AttributeError):
                for module in code_modules:
                    if hasattr(module, name):
                        return getattr(module, name)
                raise

    shim = types.ModuleType("edgekit_pickle")
    shim.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    shim.Unpickler = Unpickler
    shim.load = lambda file, **kw: Unpickler(file, **kw).load()
    return shim
