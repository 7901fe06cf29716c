"""Compiled regions kept on disk whole, so that a second process skips Dynamo's tracing.

With plain `torch.compile`, inductor's caches spare a second process the code generation,
but Dynamo still traces every region shape again and AOTAutograd looks each graph up:
17.2 s of the 38.4 s second-process start on an H200 (bench/results/cold_start_h200.json).
`torch.compile(...).aot_compile(...)` (torch >= 2.10, experimental) returns the whole
result as one serializable function: the guards, Dynamo's transformed bytecode and the
bundled inductor output. A later process loads it and calls it; nothing is traced.

Regions of one class with the same parameter and input shapes share one compiled function:
the module is its first argument, so its parameters are graph inputs. Each function keeps
Dynamo's own guards (shapes, strides, dtypes, attribute values, grad mode). A call that
fails them compiles one more variant, as Dynamo's recompilation would, so a stale or
mismatched file can cost time but never changes a result. Guards do not look at source
code, so the key also holds a digest of fastsync's model code and the diffusers version: an
upgrade that changes a block's forward compiles it again instead of running the old graph. Where compiling ahead fails (the
API is experimental), that block is compiled by plain `torch.compile` instead, with a warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import logging
import os
import pickle
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fastsync.files import write_atomically

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout below changes
_EAGER = contextvars.ContextVar("fastsync_regions_eager", default=False)


def supported() -> bool:
    """Whether this torch can compile ahead of time and load the result back."""
    return hasattr(torch.compiler, "load_compiled_function") and hasattr(torch._dynamo.config, "enable_aot_compile")


def set_eager(on: bool) -> contextvars.Token:
    """Run installed regions as plain modules (see `fastsync.accel.compile.eager_context`)."""
    return _EAGER.set(on)


def reset_eager(token: contextvars.Token) -> None:
    _EAGER.reset(token)


@dataclass
class RegionStats:
    compiled: int = 0  # functions traced and compiled in this process
    loaded: int = 0  # functions read from disk
    compile_s: float = 0.0
    load_s: float = 0.0
    rejected_files: int = 0  # files that could not be read or belong to another setup
    received: int = 0  # functions compiled by worker processes (fastsync.accel.parallel_compile)
    receive_s: float = 0.0  # loading those here


class RegionCompiler:
    """Compiles region modules on their first call, one function per class and shapes.

    Functions live in `directory`, one file per key; a file holds every variant compiled
    for its key.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.functions: dict[str, list] = {}  # key -> compiled variants
        self.blobs: dict[str, list[bytes]] = {}  # key -> the same, serialized
        self.lazy: dict[str, object] = {}  # key -> plain torch.compile, where compiling ahead failed
        self.stats = RegionStats()
        # While deferring: calls that would compile run eagerly and go to this callable
        # instead, as (key, module, args, kwargs): fastsync.accel.parallel_compile.
        self.deferred = None

    @contextlib.contextmanager
    def deferring(self, collect):
        """Calls that would compile run eagerly instead, and `collect(key, module, args, kwargs)` sees each."""
        self.deferred = collect
        try:
            yield
        finally:
            self.deferred = None

    def add_compiled(self, key: str, blobs: list[bytes]) -> None:
        """Take functions compiled elsewhere for `key` (serialized) and keep them on disk too."""
        started = time.perf_counter()
        fns = _deserialize(blobs)
        self.functions.setdefault(key, []).extend(fns)
        self.blobs.setdefault(key, []).extend(blobs)
        self.stats.received += len(fns)
        self.stats.receive_s += time.perf_counter() - started
        self._write(key)

    def install(self, module: nn.Module) -> None:
        """Route `module`'s calls through this compiler (a bound method, so deepcopy rebinds it)."""
        compiler, plain = self, type(module).forward

        def forward(self, *args, **kwargs):
            if _EAGER.get():
                return plain(self, *args, **kwargs)
            return compiler(plain, self, args, kwargs)

        module.forward = types.MethodType(forward, module)

    def __call__(self, plain, module: nn.Module, args: tuple, kwargs: dict):
        key = _call_key(module, args, kwargs)
        if key in self.lazy:
            return self.lazy[key](module, *args, **kwargs)
        variants = self.functions.get(key)
        if variants is None:
            variants = self._read(key)
        call_args = (module, *args)
        for fn in variants:
            if fn.guard_check(*call_args, **kwargs):
                return fn(*call_args, **kwargs)
        if self.deferred is not None:
            self.deferred(key, module, args, kwargs)
            return plain(module, *args, **kwargs)
        try:
            fn = self._compile(plain, call_args, kwargs)
        except Exception as exc:  # an experimental torch API: the same compiler, lazily, then
            log.warning("could not compile %s ahead of time (%s: %s); compiling it the usual way, "
                        "so later processes trace it again", type(module).__qualname__, type(exc).__name__, exc)
            self.lazy[key] = torch.compile(plain, fullgraph=True, dynamic=False)
            return self.lazy[key](*call_args, **kwargs)
        variants.append(fn)
        self.blobs[key].append(serialize(fn))
        self._write(key)
        return fn(*call_args, **kwargs)

    # -- compiling ----------------------------------------------------------------------

    def _compile(self, plain, call_args: tuple, kwargs: dict):
        started = time.perf_counter()
        fn = compile_ahead(plain, call_args, kwargs)
        fn.disable_guard_check()  # checked by __call__ itself, once
        self.stats.compiled += 1
        self.stats.compile_s += time.perf_counter() - started
        return fn

    # -- the files ----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"

    def _read(self, key: str) -> list:
        self.functions[key], self.blobs[key] = [], []
        path = self._path(key)
        if not path.is_file():
            return self.functions[key]
        started = time.perf_counter()
        try:
            stored_key, blobs = pickle.loads(path.read_bytes())
            if stored_key != key:
                raise ValueError("the file holds another key (a hash collision or a foreign file)")
            variants = _deserialize(blobs)
        except Exception as exc:  # a torn, foreign or incompatible file: compile again
            log.warning("ignoring precompiled region %s: %s", path, exc)
            self.stats.rejected_files += 1
            return self.functions[key]
        self.functions[key], self.blobs[key] = variants, list(blobs)
        self.stats.loaded += len(variants)
        self.stats.load_s += time.perf_counter() - started
        return variants

    def _write(self, key: str) -> None:
        """Atomically: a concurrent reader sees the old file or the new one. A cache that
        cannot be written (read-only, full) costs the next process a compile, not this job."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, pickle.dumps((key, self.blobs[key])))
        except OSError as exc:
            log.warning("could not keep a compiled region in %s (%s); the next process compiles it again",
                        self.directory, exc)


def compile_ahead(plain, call_args: tuple, kwargs: dict):
    """`plain(*call_args, **kwargs)` compiled ahead of time, guards included."""
    with torch._dynamo.config.patch(enable_aot_compile=True):
        return torch.compile(plain, fullgraph=True, dynamic=False).aot_compile((call_args, kwargs))


def _deserialize(blobs: list[bytes]) -> list:
    """Compiled functions from their bytes, their guards left to RegionCompiler.__call__."""
    fns = [torch.compiler.load_compiled_function(io.BytesIO(blob)) for blob in blobs]
    for fn in fns:
        fn.disable_guard_check()
    return fns


def serialize(fn) -> bytes:
    from torch._dynamo.aot_compile import AOTCompiledFunction

    return AOTCompiledFunction.serialize(fn).serialized_data


def _call_key(module: nn.Module, args: tuple, kwargs: dict) -> str:
    parts = [_module_key(module)]
    parts += [_value_key(v) for v in args]
    parts += [f"{name}={_value_key(v)}" for name, v in sorted(kwargs.items())]
    return "|".join(parts)


# fastsync.accel code inside regions
TRACED_ACCEL_MODULES = ("short_attention", "group_norm", "vae_attention", "linear_bias", "glue")


def _module_key(module: nn.Module) -> str:
    """The class, the versions, and every parameter's and buffer's layout; computed once
    per module (after fast set-up, which is when layouts stop changing)."""
    cached = module.__dict__.get("_fastsync_region_key")
    if cached is None:
        tensors = [f"{n}:{_value_key(t)}" for n, t in (*module.named_parameters(), *module.named_buffers())]
        # the classes inside too: fast set-up swaps some in place (accel.group_norm)
        inner = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in module.modules()})
        cls = type(module)
        cached = ";".join([f"format{FORMAT}", f"torch{torch.__version__}", _code_key(),
                           f"{cls.__module__}.{cls.__qualname__}", _device_key(), _tuning_key(),
                           "classes:" + ",".join(inner), *tensors])
        module.__dict__["_fastsync_region_key"] = cached
    return cached


@functools.cache
def _code_key() -> str:
    """The code Dynamo traced into the graphs: fastsync's model package, the Triton
    attention op's registration (its output layout is traced), fast mode's norms, the
    VAE's attention call, and diffusers' (the VAE's encoder and decoder) by its version.
    torch's own code is covered by its version."""
    from fastsync import models
    from fastsync.accel import short_attention
    from fastsync.components import import_diffusers

    package = Path(models.__file__).parent
    accel = Path(short_attention.__file__).parent  # read, not imported: vae_attention imports diffusers
    files = [*sorted(package.rglob("*.py")), *(accel / f"{name}.py" for name in TRACED_ACCEL_MODULES)]
    return f"models{source_digest(files, package.parent)}-diffusers{import_diffusers().__version__}"


def source_digest(files: list[Path], root: Path) -> str:
    """sha256 (16 hex digits) over the names (relative to `root`) and bytes of `files`."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _tuning_key() -> str:
    """Kernels compiled with and without launch-config timing differ (compile.kernel_tuning):
    switching it must not load the other's."""
    from fastsync.accel.compile import kernel_tuning  # that module imports this one

    return "tuned" if kernel_tuning() else "untuned"


def _device_key() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.get_device_name()}-sm{''.join(map(str, torch.cuda.get_device_capability()))}"


def _value_key(value) -> str:
    if isinstance(value, Tensor):
        return f"T{tuple(value.shape)}{tuple(value.stride())}{value.dtype}{value.device.type}"
    return repr(value)
