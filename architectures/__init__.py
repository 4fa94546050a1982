"""The architecture registry: one name -> one factory, whatever the model's origin.

Why a registry: the runner, ``bench list`` and the reports refer to models by name only, so
adding a model never touches them. Three kinds of entries exist:

* built-ins, imported explicitly at the bottom of this file (``source="builtin"``; the
  segmentation-models-pytorch baselines have ``source="smp"``);
* entry points of group ``bench.architectures`` of installed distributions, loaded lazily and
  once, the first time :func:`available`, :func:`build` or :func:`get_spec` is called
  (``source="plugin:<distribution>"``); a broken one is skipped with a warning and reported by
  :func:`plugin_errors`, so one bad plugin never hides the others;
* Python files loaded with :func:`load_plugin_file` (``source="plugin:<file name>"``); a broken
  one raises :class:`~bench.errors.ArchitectureError` naming the file.

Contract of a factory: ``factory(num_classes=3, in_channels=3, width=1.0, **options)`` returns
an ``nn.Module`` mapping a float batch ``(N, in_channels, H, W)`` to logits
``(N, num_classes, H, W)`` (no softmax) for any ``H, W >= 32``; ``width`` scales the channel
counts (1.0 = the published size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ArchitectureError, ConfigError

__all__ = [
    "ArchitectureSpec",
    "available",
    "build",
    "check_output_shape",
    "count_parameters",
    "forward_gflops",
    "get_spec",
    "load_plugin_file",
    "plugin_errors",
    "register_architecture",
]

ENTRY_POINT_GROUP = "bench.architectures"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

F_ = TypeVar("F_", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows about one architecture."""

    name: str
    factory: Callable[..., nn.Module]  # factory(num_classes=3, in_channels=3, width=1.0, **options)
    source: str  # "builtin", "smp", "plugin:<distribution or file>"
    description: str  # one line
    # What ``width`` scales, in a few words ("every conv stage, min 16 ch", "decoder only;
    # encoder at full size", "ignored: ..."); shown by ``bench list``; "" = not stated.
    width_note: str = ""


@dataclasses.dataclass
class _Loading:
    """Registrations made while one plugin is being imported (to name it and to roll back)."""

    source: str
    names: list[str] = dataclasses.field(default_factory=list)


_REGISTRY: dict[str, ArchitectureSpec] = {}
_loading: _Loading | None = None
_entry_points_loaded = False
_plugin_errors: dict[str, str] = {}
_plugin_files: dict[Path, list[str]] = {}
_plugin_modules: set[str] = set()


# --------------------------------------------------------------------------- registration


def _first_doc_line(obj: object) -> str:
    # obj.__doc__, not inspect.getdoc: a class without a docstring must not inherit nn.Module's.
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


def register_architecture(
    name: str,
    *,
    description: str | None = None,
    source: str | None = None,
    width_note: str | None = None,
) -> Callable[[F_], F_]:
    """Decorator registering a factory function (or ``nn.Module`` class) under ``name``.

    ``description`` defaults to the first docstring line; ``width_note`` says in a few words
    what ``width`` scales (``ArchitectureSpec.width_note``). While a plugin is being imported the
    source is always that plugin's, so a plugin cannot pass itself off as a built-in. A name
    registered twice raises :class:`ArchitectureError` naming both sources.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ArchitectureError(
            f"invalid architecture name {name!r}: use letters, digits, '_', '-' or '.'"
        )

    def decorator(factory: F_) -> F_:
        effective_source = _loading.source if _loading is not None else (source or "builtin")
        if not callable(factory):
            raise ArchitectureError(
                f"architecture {name!r} ({effective_source}): the registered object is not callable"
            )
        existing = _REGISTRY.get(name)
        if existing is not None:
            raise ArchitectureError(
                f"architecture {name!r} is registered twice: already by {existing.source}, "
                f"again by {effective_source}"
            )
        text = description if description is not None else _first_doc_line(factory)
        _REGISTRY[name] = ArchitectureSpec(
            name=name,
            factory=factory,
            source=effective_source,
            description=" ".join(text.split()),
            width_note=" ".join((width_note or "").split()),
        )
        if _loading is not None:
            _loading.names.append(name)
        return factory

    return decorator


@contextlib.contextmanager
def _plugin_context(source: str) -> Iterator[_Loading]:
    """Attribute registrations to ``source``; undo them all if the body raises."""
    global _loading
    previous, _loading = _loading, _Loading(source)
    current = _loading
    try:
        yield current
    except BaseException:
        for name in current.names:
            _REGISTRY.pop(name, None)
        raise
    finally:
        _loading = previous


def _unregister(name: str) -> None:
    """Remove one entry (tests only)."""
    _REGISTRY.pop(name, None)


# --------------------------------------------------------------------------- plugins


def _entry_point_dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return name or entry_point.value.split(":")[0]


def _ensure_plugins() -> None:
    """Load the ``bench.architectures`` entry points once; a broken one is skipped, not fatal."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (_entry_point_dist_name(ep), ep.name),
    )
    for entry_point in entry_points:
        dist_name = _entry_point_dist_name(entry_point)
        source = f"plugin:{dist_name}"
        _plugin_modules.add(entry_point.value.split(":")[0].strip())
        try:
            with _plugin_context(source) as loading:
                loaded = entry_point.load()
                if not loading.names and not isinstance(loaded, ModuleType) and callable(loaded):
                    # ``name = "pkg.mod:factory"`` with an undecorated factory: register it.
                    register_architecture(entry_point.name)(loaded)
                if not loading.names:
                    loading.names.extend(_adopt_preimported(entry_point, source))
                if not loading.names:
                    raise ArchitectureError("it registered no architecture")
                for name in loading.names:
                    check_output_shape(name)
        except KeyboardInterrupt as error:  # Ctrl-C while it hangs: stop, naming it
            raise ArchitectureError(
                f"interrupted (Ctrl-C) while importing plugin {dist_name!r} (entry point "
                f"{entry_point.name} = {entry_point.value}); does it hang at import?"
            ) from error
        except BaseException as error:  # noqa: BLE001 - third-party code, sys.exit() included
            message = (
                f"plugin {dist_name!r} (entry point {entry_point.name} = {entry_point.value}) "
                f"was skipped: {type(error).__name__}: {error}"
            )
            _plugin_errors[entry_point.name] = message
            warnings.warn(f"bench: architecture {message}", UserWarning, stacklevel=3)


def _adopt_preimported(entry_point: importlib.metadata.EntryPoint, source: str) -> list[str]:
    """Relabel what the entry point's module registered when it was imported before us.

    (Imported directly, e.g. in a notebook, its decorators ran outside any plugin context.)
    """
    module = entry_point.value.split(":")[0].strip()
    names = []
    for name, spec in list(_REGISTRY.items()):
        owner = getattr(spec.factory, "__module__", "") or ""
        if spec.source == "builtin" and (owner == module or owner.startswith(module + ".")):
            _REGISTRY[name] = dataclasses.replace(spec, source=source)
            names.append(name)
    return names


def plugin_errors() -> dict[str, str]:
    """Broken entry-point plugins, entry-point name -> error text (they were skipped)."""
    _ensure_plugins()
    return dict(_plugin_errors)


def _plugin_file_error(where: str, stage: str, error: BaseException) -> ArchitectureError:
    """One plugin file's failure (any ``BaseException``) as an error naming the file.

    A plugin is third-party code: ``sys.exit()`` at import must not end bench silently with
    its status, and a Ctrl-C while it hangs must say which file was running, not print a
    traceback from inside it.
    """
    if isinstance(error, KeyboardInterrupt):
        return ArchitectureError(
            f"{where}: interrupted (Ctrl-C) during its {stage}; nothing was run or written. "
            "Does it hang, e.g. waiting on the network or on input?"
        )
    if isinstance(error, SystemExit):
        return ArchitectureError(
            f"{where} called sys.exit({error.code!r}) during its {stage}; a plugin must "
            "raise an exception instead of exiting"
        )
    if isinstance(error, ArchitectureError):
        return ArchitectureError(f"{where}: {error}")
    if stage == "import":
        return ArchitectureError(f"{where} could not be imported: {type(error).__name__}: {error}")
    return ArchitectureError(f"{where}: {stage} failed: {type(error).__name__}: {error}")


def load_plugin_file(path: str | os.PathLike[str], *, validate: bool = True) -> list[str]:
    """Import a Python file that registers architectures; return the names it registered.

    Any failure (missing file, import error, duplicate name, a model whose output is not
    ``(1, 3, 120, 120)`` when ``validate``) raises :class:`ArchitectureError` naming the file,
    and nothing it registered stays registered. Loading the same file again is a no-op.

    The file's code runs with every ``BaseException`` caught: ``sys.exit()`` (any status) and
    other non-``Exception`` errors become that ``ArchitectureError`` too, and so does
    ``KeyboardInterrupt`` (Ctrl-C while the import or the shape check hangs). ``bench run``
    therefore exits 2 (bad input: the message names the plugin), not 130: nothing had
    started, so there is no run to resume.
    """
    _ensure_plugins()
    file = Path(path)
    if not file.is_file():
        raise ArchitectureError(f"plugin file {str(path)!r} does not exist")
    resolved = file.resolve()
    if resolved in _plugin_files:
        return list(_plugin_files[resolved])
    where = f"plugin file {str(path)!r}"
    digest = hashlib.sha1(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    module_name = f"_bench_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ArchitectureError(f"{where} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    _plugin_modules.add(module_name)
    try:
        with _plugin_context(f"plugin:{file.name}") as loading:
            try:
                module_spec.loader.exec_module(module)
            except BaseException as error:  # noqa: BLE001 - see the docstring
                raise _plugin_file_error(where, "import", error) from error
            if not loading.names:
                raise ArchitectureError(
                    f"{where} registered no architecture "
                    "(decorate a factory with @register_architecture)"
                )
            if validate:
                for name in loading.names:
                    try:
                        check_output_shape(name)
                    except BaseException as error:  # noqa: BLE001 - see the docstring
                        raise _plugin_file_error(where, "shape check", error) from error
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    _plugin_files[resolved] = list(loading.names)
    return list(loading.names)


def _reset_plugins_for_tests() -> None:
    """Forget every plugin (entry points and files) so that the next call reloads them."""
    global _entry_points_loaded
    for name in [n for n, spec in _REGISTRY.items() if spec.source.startswith("plugin:")]:
        del _REGISTRY[name]
    for module_name in list(sys.modules):
        if any(module_name == m or module_name.startswith(m + ".") for m in _plugin_modules):
            del sys.modules[module_name]
    _plugin_modules.clear()
    _plugin_errors.clear()
    _plugin_files.clear()
    _entry_points_loaded = False
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- look-up and build


def available(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted."""
    _ensure_plugins()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; an unknown name raises an error listing the known ones."""
    _ensure_plugins()
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if name in _plugin_errors:
        raise ArchitectureError(f"architecture {name!r} is unavailable: {_plugin_errors[name]}")
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ArchitectureError(
        f"unknown architecture {name!r}{hint}; known architectures: {', '.join(sorted(_REGISTRY))}"
    )


def _check_options(spec: ArchitectureSpec, options: dict[str, Any]) -> None:
    """Reject options the factory does not take, naming them (instead of a bare TypeError)."""
    if not options:
        return
    try:
        signature = inspect.signature(spec.factory)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    } - {"num_classes", "in_channels", "width", "self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"architecture {spec.name!r} does not accept option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )


def build(
    name: str, num_classes: int = 3, in_channels: int = 3, width: float = 1.0, **options: Any
) -> nn.Module:
    """Build architecture ``name``; every failure is an error naming the architecture."""
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"width must be a positive number, got {width!r}")
    _check_options(spec, options)
    try:
        model = spec.factory(
            num_classes=num_classes, in_channels=in_channels, width=float(width), **options
        )
    except (ArchitectureError, ConfigError):
        raise
    except Exception as error:
        raise ArchitectureError(
            f"architecture {name!r} ({spec.source}) failed to build: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise ArchitectureError(
            f"architecture {name!r} ({spec.source}) returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


# --------------------------------------------------------------------------- measurements


def check_output_shape(
    name: str,
    model: nn.Module | None = None,
    *,
    size: tuple[int, int] = (120, 120),
    num_classes: int = 3,
    width: float = 0.25,
) -> None:
    """Run one forward on zeros and insist on logits ``(1, num_classes, H, W)``.

    Catches a broken model before hours of training do. ``model`` defaults to
    ``build(name, num_classes=num_classes, width=width)``.
    """
    if model is None:
        model = build(name, num_classes=num_classes, width=width)
    height, width_px = size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, 3, height, width_px, device=device))
    except Exception as error:
        raise ArchitectureError(
            f"architecture {name!r}: forward on a (1, 3, {height}, {width_px}) input failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)
    expected = (1, num_classes, height, width_px)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != expected:
        raise ArchitectureError(
            f"architecture {name!r} returns output of shape {shape} for a "
            f"(1, 3, {height}, {width_px}) input; expected logits of shape {expected}"
        )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what the optimiser updates, as Keras' 'trainable params')."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_gflops(
    model: nn.Module, size: tuple[int, int] = (120, 120), *, in_channels: int = 3
) -> float:
    """Forward GFLOPs for one image, as torch's FlopCounterMode counts (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, in_channels, *size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------- shared model helpers


MIN_CHANNELS = 16
"""The channel floor: ``width`` never makes a built-in's stage narrower than this (see
:func:`_scaled`). Narrower, a stage is a bottleneck that decides the result more than the
architecture does (without the floor smp U-Net at width 0.25 had last stages of 8 and 4
channels and never learnt the nucleus). The thesis models' narrowest stage is 64 channels at
width 1.0, so the floor changes nothing for them at width >= 0.25."""


def _scaled(channels: int, width: float) -> int:
    """Channel count at ``width``: ``round(channels * width)``, floored at ``MIN_CHANNELS``.

    The floor is ``min(channels, MIN_CHANNELS)``: a stage is never narrower than
    ``MIN_CHANNELS`` channels, nor widened beyond its published (width 1.0) size. Used by
    every built-in (thesis models and the smp decoders), so one floor applies to all.
    """
    return max(min(channels, MIN_CHANNELS), round(channels * width))


def _pad_to_multiple(
    x: torch.Tensor, multiple: int, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad bottom/right so H and W are multiples of ``multiple`` (and >= ``min_size``).

    Bottom/right padding keeps every original pixel at the same position on the pooling grid,
    so cropping ``[:H, :W]`` afterwards gives back exactly the input's pixels.
    """
    height, width = x.shape[-2:]
    targets = [
        max(math.ceil(n / multiple), math.ceil(min_size / multiple)) * multiple
        for n in (height, width)
    ]
    if targets == [height, width]:
        return x, (height, width)
    return F.pad(x, (0, targets[1] - width, 0, targets[0] - height)), (height, width)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format to give a tensor made from ``x``: contiguous or channels-last as
    ``x`` is; a view that is neither (a crop, a channel slice) counts as channels-last when
    its channels are its innermost dimension."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _crop_or_pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (or zero-pad) bottom/right to ``size``."""
    height, width = size
    x = x[..., :height, :width]
    if x.shape[-2:] != (height, width):
        x = F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))
    return x


def _keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras defaults (momentum 0.99 -> PyTorch 0.01, eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases, BN gamma 1 / beta 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _UniformDropout(nn.Dropout):
    """``nn.Dropout`` with its mask drawn by ``torch.rand`` (keep where u >= p): the same
    distribution and scaling, but on CPU ``bernoulli_`` is several times slower than
    ``rand`` and showed in the profile of a thesis-model training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0.0
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class _ThesisHead(nn.Sequential):
    """The thesis's output layer, §3.3: 1x1 conv to the classes, then dropout 0.5.

    The softmax that follows in the thesis is left to the loss (the model returns logits).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(nn.Conv2d(in_channels, num_classes, kernel_size=1), _UniformDropout(0.5))


# --------------------------------------------------------------------------- built-ins
# Imported explicitly (no directory scanning): add a new built-in module here.
from architectures import deconvnet, segnet_basic, smp_baselines, unet_thesis  # noqa: E402, F401
