"""The book's API reference (dode.companion.api_reference) lists every public name of the public modules,
every function and public method with each of its parameters, and every docstring; the book includes it
(book/api.md in _toc.yml; tests/test_book.py builds it and finds every name on the built page)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from dode.companion import api_reference

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def page() -> str:
    return api_reference.render()


def signature_line(page: str, name: str) -> str:
    """The signature the page shows for ``name`` (``sample`` or ``Lambdas.save``)."""
    found = re.findall(rf"^```python\n({re.escape(name)}\(.*)$", page, flags=re.M)
    assert len(found) == 1, f"{name}: {len(found)} signatures on the page"
    return found[0]


def parameter_names(function, method: bool = False) -> list[str]:
    names = list(inspect.signature(function).parameters)
    return names[1:] if method and names and names[0] in ("self", "cls") else names


def documented_callables():
    """``(qualified name, shown name, function, is_method)`` of every function, class and public method."""
    for module in api_reference.PUBLIC_MODULES:
        for name, obj in api_reference.public_objects(module):
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue  # an exception's entry is its docstring (test_every_public_name_has_an_entry)
            if inspect.isclass(obj):
                yield f"{module}.{name}", name, obj, False
                for method_name, method in vars(obj).items():
                    if isinstance(method, classmethod | staticmethod):
                        method = method.__func__
                    if not method_name.startswith("_") and inspect.isfunction(method):
                        yield f"{module}.{name}.{method_name}", f"{name}.{method_name}", method, True
            elif callable(obj):
                yield f"{module}.{name}", name, obj, False


def test_the_public_modules_are_the_issues_four():
    assert api_reference.PUBLIC_MODULES == ("dode", "dode.zoo", "dode.metrics", "dode.integrations.diffusers")


def test_every_public_name_has_an_entry(page):
    for module in api_reference.PUBLIC_MODULES:
        assert f"## `{module}`" in page
        for name, _ in api_reference.public_objects(module):
            assert re.search(rf"^### `{re.escape(module)}\.{re.escape(name)}`", page, flags=re.M), name


def test_every_function_and_method_shows_each_of_its_parameters_and_its_docstring(page):
    checked = 0
    for qualified, shown, function, method in documented_callables():
        line = signature_line(page, shown)
        for parameter in parameter_names(function, method):
            assert re.search(rf"[(, *]{re.escape(parameter)}\b", line), f"{qualified}: {parameter} missing"
        doc = inspect.getdoc(function)
        if doc:
            assert doc in page, f"{qualified}: docstring missing"
        checked += 1
    # distill, sample, load, fd, FD, DODEScheduler.step, fit_lambdas... and the methods of the classes
    assert checked > 60
    assert "noise, solver='ddim', nfe=10" not in page  # annotations are shown, not dropped
    assert "distill(denoiser: Denoiser, noise: torch.Tensor, solver: str = 'ddim'" in page


def test_a_name_missing_from_all_fails_clearly(monkeypatch):
    import dode.zoo

    monkeypatch.delattr(dode.zoo, "__all__")
    with pytest.raises(ValueError, match="dode.zoo.*__all__"):
        api_reference.public_objects("dode.zoo")


def test_paths_are_shown_as_they_lie_in_the_checkout(page):
    assert "Constant: `dode/assets/fid_stats/digits-train.npz`" in page
    assert str(REPO) not in page


def test_the_book_includes_the_generated_reference():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/api" in files
    assert "```{include} generated/api.md" in (REPO / "book" / "api.md").read_text()
