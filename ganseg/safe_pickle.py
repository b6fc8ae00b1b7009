"""Restricted unpickler for NVlabs StyleGAN2 network pickles (``*.pkl``).

NVlabs pickles (stylegan2-ada-pytorch, and the StyleGAN2 networks of the stylegan3 repository)
are dicts ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs', ...}`` whose networks are
*persistent objects*: unpickling them calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, and the NVlabs implementation of
that function ``exec``\\ s ``meta['module_src']`` -- Python source code stored in the file.  A plain
``pickle.load`` (or ``torch.load(weights_only=False)``) of such a file therefore runs whatever
code the file contains.

:func:`restricted_load` reads these files without executing anything from them:

* :class:`RestrictedUnpickler.find_class` resolves only the globals in :data:`ALLOWED_GLOBALS`,
  an explicit allowlist of data-rebuilding functions.  Each one maps to an implementation in this
  module (or to a harmless builtin/torch/numpy constructor); nothing is imported by name.
  Anything else -- ``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``importlib``,
  ``getattr``, ``torch_utils.persistence._src_to_module``, arbitrary classes -- raises
  :class:`UnsafePickleError` at the moment the global is *looked up*, i.e. before it could be
  called.
* A persistent object becomes an inert :class:`PersistentModule` record holding ``class_name``
  and the raw ``__dict__`` state (``_parameters`` / ``_buffers`` / ``_modules``,
  ``_init_args`` / ``_init_kwargs``, ...).  ``module_src`` is dropped unread.
* Tensor storages are stored in NVlabs pickles as ``torch.save`` bytes
  (``torch.storage._load_from_bytes``); they are decoded with
  ``torch.load(..., weights_only=True, map_location='cpu')``, i.e. torch's own restricted
  unpickler.
* ``dnnlib.util.EasyDict`` becomes a plain ``dict``; plain ``torch.nn.modules.*`` classes become
  inert :class:`TorchModuleStub` records (state only, no torch code runs).
* TensorFlow-era pickles (``dnnlib.tflib...``) are refused with a message explaining how to
  convert them with NVlabs ``legacy.py``.

Truncated or corrupt files raise :class:`PickleFormatError` (a ``ValueError``) naming the file.
"""
from __future__ import annotations

import collections
import copy
import io
import os
import pickle
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from ganseg.errors import UserError

try:  # numpy >= 2 spells its private modules numpy._core
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x (1.26 has a partial numpy._core shim, hence the joint import)
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

__all__ = [
    "ALLOWED_GLOBALS",
    "PersistentModule",
    "PickleFormatError",
    "RestrictedUnpickler",
    "TorchModuleStub",
    "UnsafePickleError",
    "restricted_load",
]


# ----------------------------------------------------------------------------------------------
# Errors


class UnsafePickleError(UserError, ValueError):
    """The pickle references a global that is not on the allowlist (loading it could run code).

    ``global_name`` is the offending ``module.name`` (None when the refusal is not about one
    global) and ``source`` the file it came from.
    """

    def __init__(self, message: str, *, global_name: str | None = None, source: str | None = None):
        super().__init__(message)
        self.global_name = global_name
        self.source = source


class PickleFormatError(UserError, ValueError):
    """The file is not a readable network pickle (truncated, corrupt, or another format)."""


class _ContentError(ValueError):
    """Raised by the rebuild functions below; re-raised as PickleFormatError with the file name."""


# ----------------------------------------------------------------------------------------------
# Inert records for persistent objects and plain torch.nn modules


def _clean(obj: Any) -> Any:
    """Deep-copy plain data, turning dict subclasses (e.g. OrderedDict) into plain dicts."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clean(v) for v in obj)
    return copy.deepcopy(obj)


@dataclass(eq=False)
class PersistentModule:
    """Inert stand-in for one NVlabs persistent ``torch.nn.Module`` (e.g. ``Generator``).

    ``state`` is the raw module ``__dict__`` exactly as pickled (``_parameters``, ``_buffers``,
    ``_modules``, ``_non_persistent_buffers_set``, ``_init_args``, ``_init_kwargs``, plain
    attributes such as ``w_dim``).  No NVlabs code is executed or kept.

    Attribute access mirrors ``nn.Module``: ``G.synthesis.b4.conv1.weight``, ``G.mapping.w_avg``
    and ``G.img_resolution`` look the name up in ``state``, then in ``_parameters``, ``_buffers``
    and ``_modules``.
    """

    class_name: str
    state: dict = field(default_factory=dict, repr=False)

    @property
    def init_args(self) -> tuple:
        """Positional constructor arguments (``_init_args``), deep-copied."""
        return tuple(_clean(tuple(self.state.get("_init_args") or ())))

    @property
    def init_kwargs(self) -> dict:
        """Keyword constructor arguments (``_init_kwargs``) as plain nested dicts, deep-copied."""
        return _clean(dict(self.state.get("_init_kwargs") or {}))

    def named_children(self):
        """``(name, PersistentModule)`` pairs of direct submodules, in registration order."""
        for name, mod in (self.state.get("_modules") or {}).items():
            if mod is not None:
                yield name, mod

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flattened parameters and persistent buffers, keyed like ``nn.Module.state_dict()``.

        Keys look like ``'mapping.fc0.weight'`` or ``'synthesis.b4.conv1.noise_const'``; values
        are detached plain tensors (not ``Parameter``) that share memory with ``state``.
        """
        out: dict[str, torch.Tensor] = {}
        self._collect(out, "", set())
        return out

    def _collect(self, out: dict, prefix: str, active: set) -> None:
        if id(self) in active:
            raise ValueError(f"module {prefix.rstrip('.') or '<root>'} contains itself")
        active.add(id(self))
        state = self.state
        for name, value in (state.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = _detached(value, prefix + name)
        non_persistent = state.get("_non_persistent_buffers_set") or ()
        for name, value in (state.get("_buffers") or {}).items():
            if value is not None and name not in non_persistent:
                out[prefix + name] = _detached(value, prefix + name)
        for name, mod in (state.get("_modules") or {}).items():
            if mod is None:
                continue
            if not isinstance(mod, PersistentModule):
                raise ValueError(f"submodule {prefix + name} is a {type(mod).__name__}, not a module record")
            mod._collect(out, prefix + name + ".", active)
        active.discard(id(self))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; never resolve dunders (copy/pickle probe them).
        if name.startswith("__") or name in ("class_name", "state"):
            raise AttributeError(name)
        state = self.__dict__.get("state")
        if isinstance(state, dict):
            if name in state:
                return state[name]
            for key in ("_parameters", "_buffers", "_modules"):
                table = state.get(key)
                if isinstance(table, dict) and name in table:
                    return table[name]
        raise AttributeError(f"{self.__dict__.get('class_name', type(self).__name__)} record has no attribute {name!r}")

    def __repr__(self) -> str:
        try:
            n: Any = len(self.state_dict())
        except (ValueError, AttributeError, TypeError):
            n = "?"
        return f"{type(self).__name__}(class_name={self.__dict__.get('class_name')!r}, tensors={n})"


def _detached(value: Any, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{key} is a {type(value).__name__}, not a tensor")
    return value.detach()


class TorchModuleStub(PersistentModule):
    """Inert record for a plain ``torch.nn`` module class found in a pickle (e.g. ``Conv2d``).

    Created through ``copyreg.__newobj__`` / ``copyreg._reconstructor`` / the NEWOBJ opcode; it
    only stores the pickled ``__dict__`` (no ``torch.nn`` code runs).  ``class_name`` is the
    qualified name, e.g. ``'torch.nn.modules.conv.Conv2d'``.
    """

    _stub_name = "torch.nn.modules.module.Module"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.__dict__["class_name"] = cls._stub_name
        obj.__dict__["state"] = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a REDUCE that calls the class: ignore args
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
            merged: dict = {}
            for part in state:
                if part is not None:
                    if not isinstance(part, dict):
                        raise _ContentError(f"bad state for {self._stub_name}: {type(part).__name__}")
                    merged.update(part)
            state = merged
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise _ContentError(f"bad state for {self._stub_name}: {type(state).__name__}")
        self.__dict__["state"] = dict(state)

    def __reduce__(self):
        return (PersistentModule, (self.class_name, self.state))


_STUB_CLASSES: dict[str, type] = {}


def _torch_nn_stub(module: str, name: str) -> type | None:
    """A TorchModuleStub subclass for a real ``torch.nn.modules.*`` Module class, else None.

    Only modules torch has already imported are consulted (nothing is imported by name).
    """
    if not module.startswith("torch.nn.modules.") or "." in name:
        return None
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None
    qual = f"{module}.{name}"
    stub = _STUB_CLASSES.get(qual)
    if stub is None:
        stub = type(name, (TorchModuleStub,), {"_stub_name": qual, "__module__": __name__})
        _STUB_CLASSES[qual] = stub
    return stub


# ----------------------------------------------------------------------------------------------
# Safe rebuild functions (what the allowlisted globals resolve to)


class _Token:
    """A non-callable stand-in for a class that may appear only as an argument (e.g. Tensor)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_TENSOR = _Token("torch.Tensor")
_PARAMETER = _Token("torch.nn.Parameter")
_NDARRAY = _Token("numpy.ndarray")


def _reconstruct_persistent_obj(meta: Any) -> PersistentModule:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: never executes
    ``meta['module_src']``; returns an inert record."""
    if not isinstance(meta, dict):
        raise _ContentError(f"persistent object meta is a {type(meta).__name__}, expected dict")
    if meta.get("type", "class") != "class":
        raise _ContentError(f"unsupported persistent object type {meta.get('type')!r}")
    class_name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(class_name, str):
        raise _ContentError("persistent object meta has no class_name")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise _ContentError(f"persistent object {class_name} state is a {type(state).__name__}, expected dict")
    return PersistentModule(class_name=class_name, state=state)


def _load_from_bytes(b: Any):
    """Replacement for ``torch.storage._load_from_bytes``: a storage saved with ``torch.save``
    (legacy format), decoded by torch's weights-only unpickler onto the CPU."""
    if not isinstance(b, (bytes, bytearray)):
        raise _ContentError(f"tensor storage payload is a {type(b).__name__}, expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
            storage = torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        details = [
            ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.startswith(("Weights only load failed", "Check the documentation"))
        ]
        detail = details[0] if details else text
        if "Weights only load failed" in text and any(w in detail for w in ("GLOBAL", "global", "Unsupported")):
            raise UnsafePickleError(
                f"refusing to load: a tensor storage payload (torch.storage._load_from_bytes) contains a "
                f"pickle that torch's weights-only loader rejects: {detail}",
                global_name="torch.storage._load_from_bytes",
            ) from None
        raise _ContentError(f"corrupt tensor storage payload: {detail}") from None
    except Exception as exc:  # torch's legacy reader raises assorted errors (even AssertionError) on bad bytes
        raise _ContentError(f"corrupt tensor storage payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _ContentError(f"tensor storage payload decoded to a {type(storage).__name__}, not a storage")
    return storage


def _check_geometry(size: Any, stride: Any, offset: Any) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    if not isinstance(size, (tuple, list, torch.Size)) or not all(isinstance(s, int) for s in size):
        raise _ContentError(f"bad tensor size {size!r}")
    if not isinstance(stride, (tuple, list)) or not all(isinstance(s, int) for s in stride):
        raise _ContentError(f"bad tensor stride {stride!r}")
    if len(size) != len(stride) or not isinstance(offset, int) or offset < 0:
        raise _ContentError(f"bad tensor geometry size={size!r} stride={stride!r} offset={offset!r}")
    return tuple(size), tuple(stride), offset


def _tensor_on(untyped: torch.UntypedStorage, dtype: torch.dtype, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    size, stride, offset = _check_geometry(size, stride, offset)
    try:
        return torch.empty((0,), dtype=dtype).set_(untyped, offset, size, stride)
    except RuntimeError as exc:
        raise _ContentError(f"tensor does not fit its storage: {exc}") from None


def _from_typed(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage):
        raise _ContentError(f"tensor storage is a {type(storage).__name__}, expected a typed storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _tensor_on(storage._untyped_storage, storage.dtype, offset, size, stride)


def _finish(t: torch.Tensor, requires_grad: Any, metadata: Any) -> torch.Tensor:
    if metadata:
        if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, bool) for k, v in metadata.items())):
            raise _ContentError(f"bad tensor metadata {metadata!r}")
        torch._utils.set_tensor_metadata(t, metadata)  # conj / neg bits
    if requires_grad and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    return t


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _from_typed(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # backward_hooks is always an empty OrderedDict in real files; hooks are never restored.
    return _finish(_from_typed(storage, storage_offset, size, stride), requires_grad, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if isinstance(storage, torch.TypedStorage):
        storage = storage._untyped_storage
    if not isinstance(storage, torch.UntypedStorage) or not isinstance(dtype, torch.dtype):
        raise _ContentError("bad arguments to _rebuild_tensor_v3")
    return _finish(_tensor_on(storage, dtype, storage_offset, size, stride), requires_grad, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise _ContentError(f"parameter data is a {type(data).__name__}, expected a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and (data.is_floating_point() or data.is_complex()))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks=None, state=None):
    return _rebuild_parameter(data, requires_grad)  # python-level attributes on a Parameter are dropped


_TENSOR_REBUILDERS: set[Callable] = set()  # filled below; the only functions _rebuild_from_type* may call


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise _ContentError("tensor subclass rebuild with an unexpected function")
    t = func(*args)
    if new_type is _PARAMETER:
        if not isinstance(t, torch.nn.Parameter):
            t = torch.nn.Parameter(t, requires_grad=t.requires_grad)
        return t
    if new_type is _TENSOR:
        return t
    raise UnsafePickleError(
        f"refusing to load: tensor subclass {new_type!r} is not allowed", global_name=repr(new_type)
    )


def _rebuild_from_type(func, type_, args, dict_=None):
    return _rebuild_from_type_v2(func, type_, args, None)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise _ContentError("unexpected _codecs.encode call")
    return obj.encode("latin1")


_NEWOBJ_OK = (dict, collections.OrderedDict, set, frozenset)


def _newobj(cls, *args):
    if isinstance(cls, type) and issubclass(cls, TorchModuleStub):
        return cls.__new__(cls)
    if cls in _NEWOBJ_OK:
        return cls.__new__(cls, *args)
    raise UnsafePickleError(f"refusing to load: copyreg.__newobj__ of {cls!r} is not allowed", global_name="copyreg.__newobj__")


def _newobj_ex(cls, args, kwargs):
    return _newobj(cls, *tuple(args or ()))


def _reconstructor(cls, base, state):
    # Protocol 0/1 spelling of "make an instance and set its state".
    if isinstance(cls, type) and issubclass(cls, TorchModuleStub):
        return cls.__new__(cls)
    if cls in (dict, collections.OrderedDict) and base in (dict, object):
        obj = cls()
        if state is not None:
            obj.update(state)
        return obj
    raise UnsafePickleError(f"refusing to load: copyreg._reconstructor of {cls!r} is not allowed", global_name="copyreg._reconstructor")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"refusing to load: numpy array subclass {subtype!r} is not allowed", global_name=repr(subtype))
    return _np_multiarray._reconstruct(np.ndarray, shape, dtype)


def _np_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype):
        raise _ContentError(f"numpy scalar with dtype {dtype!r}")
    return _np_multiarray.scalar(dtype, *args)


def _np_frombuffer(buf, dtype, shape, order):
    return _np_numeric._frombuffer(buf, dtype, shape, order)


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise _ContentError(f"numpy dtype spec {spec!r}")
    return np.dtype(spec, align, copy)


def _torch_size(*args):
    if len(args) == 1 and isinstance(args[0], (tuple, list)) and all(isinstance(s, int) for s in args[0]):
        return torch.Size(args[0])
    raise _ContentError(f"bad torch.Size arguments {args!r}")


def _torch_device(*args):
    if 1 <= len(args) <= 2 and isinstance(args[0], str) and all(isinstance(a, int) for a in args[1:]):
        return torch.device(*args)
    raise _ContentError(f"bad torch.device arguments {args!r}")


for _f in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, _rebuild_parameter_with_state):
    _TENSOR_REBUILDERS.add(_f)


# ----------------------------------------------------------------------------------------------
# The allowlist

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_TORCH_VALUES = {  # torch.<name> constants that are pickled by name (not callable)
    name: value
    for name, value in vars(torch).items()  # vars(): no lazy imports triggered
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format))
}

#: ``(module, name)`` -> what it resolves to.  This is the complete list of globals
#: :class:`RestrictedUnpickler` will resolve (plus stubs for real ``torch.nn.modules.*`` classes).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # NVlabs persistence + dnnlib
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    # containers
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "dict"): dict,  # only as the base argument of copyreg._reconstructor
    ("builtins", "object"): object,  # idem
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("copyreg", "__newobj_ex__"): _newobj_ex,
    # torch tensors / parameters / storages
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
    ("torch.tensor", "_rebuild_from_type"): _rebuild_from_type,  # torch <= 1.9 module name
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._tensor", "Tensor"): _TENSOR,
    ("torch.tensor", "Tensor"): _TENSOR,
    ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    **{("torch", name): value for name, value in _TORCH_VALUES.items()},
    # numpy scalars / dtypes / arrays
    **{(m, "scalar"): _np_scalar for m in _NUMPY_CORE},
    **{(m, "_reconstruct"): _np_reconstruct for m in _NUMPY_CORE},
    **{(m, "_frombuffer"): _np_frombuffer for m in _NUMPY_NUMERIC},
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NDARRAY,
}

# Python 2 spellings that protocol <= 2 pickles may carry (the C unpickler passes them raw).
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

_TF_HINT = (
    "this is a TensorFlow StyleGAN2 pickle (it references {g}); ganseg reads only PyTorch network "
    "pickles. Convert it first with NVlabs stylegan2-ada-pytorch legacy.py "
    "(python legacy.py --source=OLD.pkl --dest=NEW.pkl) and load the converted file"
)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` (see module docstring)."""

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        mod = _MODULE_ALIASES.get(module, module)
        target = ALLOWED_GLOBALS.get((mod, name))
        if target is not None:
            return target
        stub = _torch_nn_stub(mod, name)
        if stub is not None:
            return stub
        qual = f"{module}.{name}"
        if mod == "dnnlib.tflib" or mod.startswith("dnnlib.tflib.") or mod.split(".")[0] == "tensorflow":
            raise UnsafePickleError(f"{self.source}: {_TF_HINT.format(g=qual)}", global_name=qual, source=self.source)
        raise UnsafePickleError(
            f"{self.source}: refusing to load: the pickle references {qual}, which is not on "
            f"ganseg's allowlist of data-rebuilding globals (unpickling it could execute code). "
            f"Only NVlabs StyleGAN2 network pickles (tensors, numpy scalars, dicts) are supported.",
            global_name=qual,
            source=self.source,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refusing to load: the pickle uses persistent ids ({pid!r:.60}); "
            f"is this a torch.save checkpoint? load it with torch.load(..., weights_only=True)",
            source=self.source,
        )


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a legacy (non-zip) torch.save file


def restricted_load(file: str | os.PathLike | BinaryIO) -> Any:
    """Load an NVlabs network pickle without executing code from it.

    ``file`` is a path or a binary file object.  Returns the unpickled object (for NVlabs files a
    dict whose networks are :class:`PersistentModule` records).  Raises :class:`UnsafePickleError`
    for any global outside the allowlist and :class:`PickleFormatError` for truncated, corrupt or
    non-pickle files; both are ``ValueError`` and name the file.
    """
    if isinstance(file, (str, os.PathLike)):
        source = os.fspath(file)
        with open(source, "rb") as f:
            return _load(f, source)
    source = str(getattr(file, "name", None) or "<file object>")
    return _load(file, source)


def _load(f: BinaryIO, source: str) -> Any:
    head = b""
    try:
        if f.seekable():
            pos = f.tell()
            head = f.read(4)
            f.seek(pos)
    except (AttributeError, OSError):
        pass
    if head == b"PK\x03\x04":
        raise PickleFormatError(
            f"{source}: this is a zip archive (a torch.save checkpoint?), not an NVlabs network "
            f"pickle; load it with torch.load(..., weights_only=True)"
        )
    try:
        obj = RestrictedUnpickler(f, source=source).load()
    except UnsafePickleError as exc:
        if exc.source is None:
            raise UnsafePickleError(f"{source}: {exc}", global_name=exc.global_name, source=source) from None
        raise
    except _ContentError as exc:
        raise PickleFormatError(f"{source}: not a valid network pickle: {exc}") from None
    except EOFError:
        raise PickleFormatError(f"{source}: truncated pickle (unexpected end of file)") from None
    except RecursionError:
        raise PickleFormatError(f"{source}: pickle is nested too deeply") from None
    except MemoryError:
        raise PickleFormatError(f"{source}: pickle asks for more memory than is available (corrupt?)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            RuntimeError, OverflowError, UnicodeDecodeError, OSError) as exc:
        raise PickleFormatError(
            f"{source}: not a valid network pickle (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        raise PickleFormatError(
            f"{source}: this is a legacy torch.save file, not an NVlabs network pickle; "
            f"load it with torch.load(..., weights_only=True)"
        )
    return obj
