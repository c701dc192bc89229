"""The book's API reference, generated from the docstrings of the public API.

:func:`render` writes, for each module of :data:`PUBLIC_MODULES` and each name of its ``__all__``: the
signature of every function, class and public method (parameters, defaults, annotations as written) and its
docstring as written; constants show their value, or their keys for a mapping. The text is plain
Markdown with the docstrings in literal blocks, so the page needs no Sphinx extension and cannot break the
book's build on a docstring's markup. :mod:`dode.companion.build_book` writes it to
``book/generated/api.md`` before each build (book/api.md includes it); tests/test_api_reference.py checks
that it lists every public function with its parameters.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from dode.files import REPO_ROOT

__all__ = ["PUBLIC_MODULES", "public_objects", "render"]

PUBLIC_MODULES = ("dode", "dode.zoo", "dode.metrics", "dode.integrations.diffusers")
# a constant's value longer than this is summarised (its type and length, or a mapping's keys)
MAX_VALUE_CHARS = 160


def public_objects(module_name: str) -> list[tuple[str, object]]:
    """``(name, object)`` for each name of the module's ``__all__``, in its order."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"module {module_name!r} has no __all__: its public API is undefined")
    return [(name, getattr(module, name)) for name in names]


class _Verbatim(str):
    """Text a signature prints as it is: an annotation as the code wrote it (``from __future__ import
    annotations`` makes them strings, which would print quoted), a path default as :func:`_checkout_path`."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(annotation):
    return _Verbatim(annotation) if isinstance(annotation, str) else annotation


def _checkout_path(path: Path) -> str:
    """A path as it lies in the checkout (dode/assets/..., data/...), not this machine's absolute one."""
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _parameter(parameter: inspect.Parameter) -> inspect.Parameter:
    default = parameter.default
    if isinstance(default, Path):
        default = _Verbatim(f"Path('{_checkout_path(default)}')")
    return parameter.replace(annotation=_unquoted(parameter.annotation), default=default)


def _signature(name: str, obj, method: bool = False) -> str:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without introspectable parameters
        return f"{name}(...)"
    parameters = list(signature.parameters.values())
    if method and parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    signature = signature.replace(
        parameters=[_parameter(p) for p in parameters],
        return_annotation=_unquoted(signature.return_annotation),
    )
    return f"{name}{signature}"


def _docstring(obj) -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc:
        return ["*(no docstring)*", ""]
    # four backticks: a docstring may show a fenced example of its own
    return ["````text", doc, "````", ""]


def _methods(cls) -> list[tuple[str, object]]:
    """The class's own public methods, properties included, in definition order."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            out.append((name, member))
    return out


def _value(value) -> str:
    if isinstance(value, Path):
        return f"`{_checkout_path(value)}`"
    text = repr(value)
    if len(text) <= MAX_VALUE_CHARS:
        return f"`{text}`"
    if isinstance(value, dict):
        return f"a dict of {len(value)} entries: " + ", ".join(f"`{key}`" for key in value)
    return f"a {type(value).__name__} of {len(value)} entries" if hasattr(value, "__len__") else "(long)"


def _entry(module_name: str, name: str, obj) -> list[str]:
    qualified = f"{module_name}.{name}"
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return [f"### `{qualified}` (exception)", ""] + _docstring(obj)
    if inspect.isclass(obj):
        lines = [f"### `{qualified}` (class)", "", "```python", _signature(name, obj), "```", ""]
        lines += _docstring(obj)
        for method_name, method in _methods(obj):
            if isinstance(method, property):
                lines += [f"#### `{name}.{method_name}` (property)", ""] + _docstring(method)
            else:
                signature = _signature(f"{name}.{method_name}", method, method=True)
                lines += [f"#### `{name}.{method_name}`", "", "```python", signature, "```", ""]
                lines += _docstring(method)
        return lines
    if callable(obj):
        lines = [f"### `{qualified}`", "", "```python", _signature(name, obj), "```", ""]
        return lines + _docstring(obj)
    return [f"### `{qualified}`", "", f"Constant: {_value(obj)}", ""]


def render(modules: tuple[str, ...] = PUBLIC_MODULES) -> str:
    """The reference of ``modules`` as Markdown (a section per module, an entry per public name)."""
    lines = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        summary = re.sub(r":\w+:`~?", "`", summary)  # Sphinx roles (:mod:`x`) as plain code in Markdown
        lines += [f"## `{module_name}`", "", summary, ""]
        for name, obj in public_objects(module_name):
            lines += _entry(module_name, name, obj)
    return "\n".join(lines).rstrip() + "\n"
