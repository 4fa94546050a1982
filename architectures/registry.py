"""The architecture registry: one name -> one factory, whatever the model's origin.

This module owns the registry and nothing else: :class:`Registry` (the name ->
:class:`ArchitectureSpec` table, its ``register`` decorator, look-up, ``build``, the output-shape
check by name, and plugin loading from entry points and files) and :data:`default`, the
instance behind the module-level functions (:func:`register_architecture`, :func:`available`,
:func:`get_spec`, :func:`build`, :func:`check_output_shape`, :func:`load_plugin_file`,
:func:`plugin_errors`) that ``architectures`` re-exports. It imports no model: the built-ins
register themselves into :data:`default` when ``architectures`` imports them. The layers they
share are :mod:`architectures.layers`'; measuring a built model is :mod:`architectures.measure`'.

Why a registry: the runner, ``bench list`` and the reports refer to models by name only, so
adding a model never touches them. Three kinds of entries exist:

* built-ins, the modules ``architectures/__init__.py`` imports explicitly
  (``source="builtin"``; the segmentation-models-pytorch baselines have ``source="smp"``);
* entry points of group ``bench.architectures`` of installed distributions, loaded lazily and
  once per registry, the first time :func:`available`, :func:`build` or :func:`get_spec` is
  called (``source="plugin:<distribution>"``); a broken one is skipped with a warning and
  reported by :func:`plugin_errors`, so one bad plugin never hides the others;
* Python files loaded with :func:`load_plugin_file` (``source="plugin:<file name>"``); a broken
  one raises :class:`~bench.errors.ArchitectureError` naming the file.

Contract of a factory: ``factory(num_classes=3, in_channels=3, width=1.0, **options)`` returns
an ``nn.Module`` mapping a float batch ``(N, in_channels, H, W)`` to logits
``(N, num_classes, H, W)`` (no softmax) for any ``H, W >= 32``; ``width`` scales the channel
counts (1.0 = the published size).

A plugin registers with the module-level :func:`register_architecture`; while a registry
imports a plugin, that decorator registers into the importing registry, whichever it is.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from torch import nn

from architectures.measure import check_logits_shape
from bench.errors import ArchitectureError, ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "ArchitectureSpec",
    "Registry",
    "available",
    "build",
    "check_output_shape",
    "default",
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


# The registries importing a plugin now, innermost last: where register_architecture goes.
_importing: list[Registry] = []


class Registry:
    """Architecture name -> :class:`ArchitectureSpec`, with the plugins loaded into it.

    ``Registry(specs)`` starts with ``specs`` (e.g. another registry's built-ins,
    ``other.specs()``) and with no plugin loaded: its entry points load the first time it is
    asked for a name, its plugin files when :meth:`load_plugin_file` is called.
    """

    def __init__(self, specs: Iterable[ArchitectureSpec] = ()) -> None:
        self._specs: dict[str, ArchitectureSpec] = {}
        self._loading: _Loading | None = None
        self._entry_points_loaded = False
        self._plugin_errors: dict[str, str] = {}
        self._plugin_files: dict[Path, list[str]] = {}
        self._plugin_modules: set[str] = set()
        for spec in specs:
            self._add(spec)

    def __repr__(self) -> str:
        return f"<Registry of {len(self._specs)} architectures>"

    # ----------------------------------------------------------------------- registration

    def _add(self, spec: ArchitectureSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None:
            raise ArchitectureError(
                f"architecture {spec.name!r} is registered twice: already by {existing.source}, "
                f"again by {spec.source}"
            )
        self._specs[spec.name] = spec

    def register(
        self,
        name: str,
        *,
        description: str | None = None,
        source: str | None = None,
        width_note: str | None = None,
    ) -> Callable[[F_], F_]:
        """Decorator registering a factory function (or ``nn.Module`` class) under ``name``.

        ``description`` defaults to the first docstring line; ``width_note`` says in a few
        words what ``width`` scales (``ArchitectureSpec.width_note``). While a plugin is being
        imported the source is always that plugin's, so a plugin cannot pass itself off as a
        built-in. A name registered twice raises :class:`ArchitectureError` naming both
        sources.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ArchitectureError(
                f"invalid architecture name {name!r}: use letters, digits, '_', '-' or '.'"
            )

        def decorator(factory: F_) -> F_:
            loading = self._loading
            effective_source = loading.source if loading is not None else (source or "builtin")
            if not callable(factory):
                raise ArchitectureError(
                    f"architecture {name!r} ({effective_source}): "
                    "the registered object is not callable"
                )
            text = description if description is not None else _first_doc_line(factory)
            self._add(
                ArchitectureSpec(
                    name=name,
                    factory=factory,
                    source=effective_source,
                    description=" ".join(text.split()),
                    width_note=" ".join((width_note or "").split()),
                )
            )
            if loading is not None:
                loading.names.append(name)
            return factory

        return decorator

    @contextlib.contextmanager
    def _plugin_context(self, source: str) -> Iterator[_Loading]:
        """Attribute registrations to ``source``; undo them all if the body raises."""
        previous, self._loading = self._loading, _Loading(source)
        current = self._loading
        _importing.append(self)
        try:
            yield current
        except BaseException:
            for name in current.names:
                self._specs.pop(name, None)
            raise
        finally:
            _importing.pop()
            self._loading = previous

    # ----------------------------------------------------------------------- plugins

    def _load_entry_points(self) -> None:
        """Load the ``bench.architectures`` entry points once; a broken one is skipped."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        entry_points = sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: (_entry_point_dist_name(ep), ep.name),
        )
        for entry_point in entry_points:
            dist_name = _entry_point_dist_name(entry_point)
            source = f"plugin:{dist_name}"
            self._plugin_modules.add(entry_point.value.split(":")[0].strip())
            try:
                with self._plugin_context(source) as loading:
                    loaded = entry_point.load()
                    if (
                        not loading.names
                        and not isinstance(loaded, ModuleType)
                        and callable(loaded)
                    ):
                        # ``name = "pkg.mod:factory"`` with an undecorated factory: register it.
                        self.register(entry_point.name)(loaded)
                    if not loading.names:
                        loading.names.extend(self._adopt_preimported(entry_point, source))
                    if not loading.names:
                        raise ArchitectureError("it registered no architecture")
                    for name in loading.names:
                        self.check_output_shape(name)
            except KeyboardInterrupt as error:  # Ctrl-C while it hangs: stop, naming it
                raise ArchitectureError(
                    f"interrupted (Ctrl-C) while importing plugin {dist_name!r} (entry point "
                    f"{entry_point.name} = {entry_point.value}); does it hang at import?"
                ) from error
            except BaseException as error:  # noqa: BLE001 - third-party code, sys.exit() included
                message = (
                    f"plugin {dist_name!r} (entry point {entry_point.name} = "
                    f"{entry_point.value}) was skipped: {type(error).__name__}: {error}"
                )
                self._plugin_errors[entry_point.name] = message
                warnings.warn(
                    f"bench: architecture {message}", UserWarning, stacklevel=_caller_stacklevel()
                )

    def _adopt_preimported(
        self, entry_point: importlib.metadata.EntryPoint, source: str
    ) -> list[str]:
        """Relabel what the entry point's module registered when it was imported before us.

        (Imported directly, e.g. in a notebook, its decorators ran outside any plugin context.)
        """
        module = entry_point.value.split(":")[0].strip()
        names = []
        for name, spec in list(self._specs.items()):
            owner = getattr(spec.factory, "__module__", "") or ""
            if spec.source == "builtin" and (owner == module or owner.startswith(module + ".")):
                self._specs[name] = dataclasses.replace(spec, source=source)
                names.append(name)
        return names

    def plugin_errors(self) -> dict[str, str]:
        """Broken entry-point plugins, entry-point name -> error text (they were skipped)."""
        self._load_entry_points()
        return dict(self._plugin_errors)

    @property
    def plugin_modules(self) -> frozenset[str]:
        """Names of the modules imported as this registry's plugins (entry points, files)."""
        return frozenset(self._plugin_modules)

    def load_plugin_file(self, path: str | os.PathLike[str], *, validate: bool = True) -> list[str]:
        """Import a Python file that registers architectures; return the names it registered.

        Any failure (missing file, import error, duplicate name, a model whose output is not
        ``(1, 3, 120, 120)`` when ``validate``) raises :class:`ArchitectureError` naming the
        file, and nothing it registered stays registered. Loading the same file again is a
        no-op.

        The file's code runs with every ``BaseException`` caught: ``sys.exit()`` (any status)
        and other non-``Exception`` errors become that ``ArchitectureError`` too, and so does
        ``KeyboardInterrupt`` (Ctrl-C while the import or the shape check hangs). ``bench run``
        therefore exits 2 (bad input: the message names the plugin), not 130: nothing had
        started, so there is no run to resume.
        """
        self._load_entry_points()
        file = Path(path)
        if not file.is_file():
            raise ArchitectureError(f"plugin file {str(path)!r} does not exist")
        resolved = file.resolve()
        if resolved in self._plugin_files:
            return list(self._plugin_files[resolved])
        where = f"plugin file {str(path)!r}"
        digest = hashlib.sha1(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:10]
        module_name = f"_bench_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{digest}"
        module_spec = importlib.util.spec_from_file_location(module_name, resolved)
        if module_spec is None or module_spec.loader is None:
            raise ArchitectureError(f"{where} is not a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        self._plugin_modules.add(module_name)
        try:
            with self._plugin_context(f"plugin:{file.name}") as loading:
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
                            self.check_output_shape(name)
                        except BaseException as error:  # noqa: BLE001 - see the docstring
                            raise _plugin_file_error(where, "shape check", error) from error
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        self._plugin_files[resolved] = list(loading.names)
        return list(loading.names)

    # ----------------------------------------------------------------------- look-up and build

    def specs(self) -> list[ArchitectureSpec]:
        """Every spec registered so far, in registration order (loads no plugin)."""
        return list(self._specs.values())

    def available(self, pattern: str = "*") -> list[str]:
        """Registered names matching the fnmatch ``pattern``, sorted."""
        self._load_entry_points()
        return sorted(name for name in self._specs if fnmatch.fnmatchcase(name, pattern))

    def get_spec(self, name: str) -> ArchitectureSpec:
        """The spec of ``name``; an unknown name raises an error listing the known ones."""
        self._load_entry_points()
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        if name in self._plugin_errors:
            raise ArchitectureError(
                f"architecture {name!r} is unavailable: {self._plugin_errors[name]}"
            )
        close = difflib.get_close_matches(name, list(self._specs), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ArchitectureError(
            f"unknown architecture {name!r}{hint}; "
            f"known architectures: {', '.join(sorted(self._specs))}"
        )

    def build(
        self,
        name: str,
        num_classes: int = 3,
        in_channels: int = 3,
        width: float = 1.0,
        **options: Any,
    ) -> nn.Module:
        """Build architecture ``name``; every failure is an error naming the architecture."""
        spec = self.get_spec(name)
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

    def check_output_shape(
        self,
        name: str,
        model: nn.Module | None = None,
        *,
        size: tuple[int, int] = (120, 120),
        num_classes: int = 3,
        width: float = 0.25,
    ) -> None:
        """Run one forward on zeros and insist on logits ``(1, num_classes, H, W)``.

        Catches a broken model before hours of training do. ``model`` defaults to
        ``self.build(name, num_classes=num_classes, width=width)``; the check itself is
        :func:`architectures.measure.check_logits_shape`.
        """
        if model is None:
            model = self.build(name, num_classes=num_classes, width=width)
        check_logits_shape(name, model, size=size, num_classes=num_classes)


# --------------------------------------------------------------------------- helpers


def _first_doc_line(obj: object) -> str:
    # obj.__doc__, not inspect.getdoc: a class without a docstring must not inherit nn.Module's.
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _entry_point_dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return name or entry_point.value.split(":")[0]


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this module (the caller of the public
    function or method), for a warning raised from inside it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


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


# --------------------------------------------------------------------------- the default registry

default = Registry()
"""The registry behind the module-level functions and ``bench``; replace it (tests do, with a
fresh ``Registry(default.specs())``) to work on another. Looked up at each call."""


def register_architecture(
    name: str,
    *,
    description: str | None = None,
    source: str | None = None,
    width_note: str | None = None,
) -> Callable[[F_], F_]:
    """Decorator registering a factory function (or ``nn.Module`` class) under ``name``.

    Registers into the registry importing the plugin being imported, :data:`default`
    otherwise; see :meth:`Registry.register` (``description`` defaults to the first docstring
    line; a name registered twice raises :class:`ArchitectureError` naming both sources).
    """
    target = _importing[-1] if _importing else default
    return target.register(name, description=description, source=source, width_note=width_note)


def available(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted (:meth:`Registry.available`)."""
    return default.available(pattern)


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; an unknown name raises an error listing the known ones."""
    return default.get_spec(name)


def architecture_options(
    name: str, encoder: str, encoder_weights: str | None = None
) -> dict[str, Any]:
    """The options ``bench run`` builds ``name`` with: for the smp baselines the encoder and
    its pretrained weights (``None``: random initialisation); nothing for the others."""
    if get_spec(name).source != "smp":
        return {}
    return {"encoder": encoder, "encoder_weights": encoder_weights}


def build(
    name: str, num_classes: int = 3, in_channels: int = 3, width: float = 1.0, **options: Any
) -> nn.Module:
    """Build architecture ``name``; every failure is an error naming the architecture."""
    return default.build(
        name, num_classes=num_classes, in_channels=in_channels, width=width, **options
    )


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
    default.check_output_shape(name, model, size=size, num_classes=num_classes, width=width)


def load_plugin_file(path: str | os.PathLike[str], *, validate: bool = True) -> list[str]:
    """Import a Python file that registers architectures; return the names it registered.

    Any failure, ``sys.exit()`` and Ctrl-C included, raises :class:`ArchitectureError` naming
    the file and leaves nothing of it registered; see :meth:`Registry.load_plugin_file`.
    """
    return default.load_plugin_file(path, validate=validate)


def plugin_errors() -> dict[str, str]:
    """Broken entry-point plugins, entry-point name -> error text (they were skipped)."""
    return default.plugin_errors()
