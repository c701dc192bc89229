"""Resumable experiment results as xarray NetCDF.

Every notebook writes one file, ``<results_dir>/<notebook-stem>.nc``. A :class:`ResultStore` holds named
variables over labelled dimensions (e.g. ``fd`` over ``solver x method x nfe x seed``); a cell is written
atomically (temp file in the same folder, then ``os.replace``) as soon as it is finished, so an interrupted
run loses nothing, and a rerun skips every cell the file already holds.

Two kinds of parameters are told apart:

* the *sweep* (coordinate values: solvers, NFEs, seeds...) may grow between runs: new cells are added,
  stored ones are kept;
* the *comparability key* (profile, sample counts, K, B, metric, ...) must be identical: cells computed
  under another key are not comparable, and reopening the file with a different key is refused with a
  message that names the differences, instead of mixing them;
* the *identities* of the models (one per value of the ``model`` coordinate): everything a model's numbers
  depend on besides the sweep -- the checkpoint's content hash, its schedule, and the metric's own
  identity (the FID reference statistics' and the Inception weights' hashes, or the FD classifier's and
  reference's). A model already in the file must come back with the same identity, else the file is
  refused with a message that names the model and what changed; a new model is added to the sweep;
* the *models* of a file with a ``model`` dimension are those of the current run's protocol, so that its
  pages never draw a panel of a model of an earlier run: the cells of a model the run leaves out are kept
  aside, moved to ``<stem>.aside.nc`` beside the file (:func:`aside_path`), and a later run with that model
  (the same identity, the same comparability key) brings them back instead of computing them again.

Provenance (profile, full parameters as JSON, the models' identities, dode version and git commit, device,
date, and the versions of Python and of the packages that compute the numbers, :func:`package_versions`) is
stored in the attributes. NetCDF attributes hold no bools/None/dicts, so values are JSON. A file resumed
under other versions of torch, numpy, scipy, diffusers or pytorch-fid than the ones it was written with is
resumed (the cells are the same computation), but with a :class:`VersionsChangedWarning` that names them,
and the file keeps the earlier versions in its ``earlier_versions`` attribute: its cells are then of mixed
versions, and it says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import platform
import warnings
from pathlib import Path

import numpy as np

from dode.files import atomic_write, git_commit
from dode.version import __version__

__all__ = [
    "ResultStore",
    "StoreView",
    "IncompatibleResults",
    "VersionsChangedWarning",
    "NUMBER_PACKAGES",
    "package_versions",
    "provenance",
    "write_netcdf",
    "aside_path",
]

# the distributions whose version can change a result's numbers (kernels, linear algebra, the scheduler
# code of the diffusers peers, the Inception port of FID)
NUMBER_PACKAGES = ("torch", "numpy", "scipy", "diffusers", "pytorch-fid")


class IncompatibleResults(RuntimeError):
    """A results file cannot be resumed: it holds cells computed under other parameters, or it is not a
    readable dode results file (truncated, say by an interrupted copy, or another program's file)."""


class VersionsChangedWarning(UserWarning):
    """A results file is resumed under other versions of :data:`NUMBER_PACKAGES` than it was written with."""


def package_versions() -> dict[str, str]:
    """Python's version and those of :data:`NUMBER_PACKAGES` (``"absent"`` for one not installed), read
    from the installed distributions' metadata without importing them."""
    versions = {"python": platform.python_version()}
    for name in NUMBER_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
        return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    except ImportError:  # pragma: no cover
        return platform.machine()


def provenance(profile: str, params: dict, models: dict | None = None) -> dict:
    """Attributes recorded with every results file (all strings); ``models``: name -> identity."""
    return {
        "profile": str(profile),
        "parameters": json.dumps(params, sort_keys=True, default=str),
        "model": ", ".join(models or {}),
        "dode_version": __version__,
        "git_commit": git_commit(),
        "versions": _json_attr(package_versions()),
        "device": _device_description(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def aside_path(path: str | Path) -> Path:
    """Where a results file keeps the cells of the models a later run left out: ``<stem>.aside.nc``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.aside.nc")


def write_netcdf(ds, path: str | Path) -> Path:
    """Write an xarray Dataset atomically (:func:`dode.files.atomic_write`)."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(record: dict, prefix: str = "") -> dict:
    """``{"metric": {"inception_sha256": h}}`` -> ``{"metric.inception_sha256": h}``, to name what changed."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class ResultStore:
    """A NetCDF file of experiment cells that can be filled, interrupted and resumed.

    Parameters
    ----------
    path: the file (``data/results/<notebook-stem>.nc``).
    dims: ordered mapping ``dimension -> coordinate values`` of the sweep (may grow between runs).
    key: the comparability key: a JSON-able dict that must match the stored one exactly.
    attrs: provenance attributes (see :func:`provenance`); refreshed on every write. The package versions
        and the device are recorded whatever ``attrs`` holds.
    identities: model name -> JSON-able identity; each model the file already holds must match its stored
        identity (see the module doc), new ones are added.
    """

    def __init__(
        self,
        path: str | Path,
        dims: dict[str, list],
        key: dict,
        attrs: dict | None = None,
        identities: dict[str, dict] | None = None,
    ):
        import xarray as xr

        self.path = Path(path)
        self.key = json.loads(_json_attr(key))
        self.identities = json.loads(_json_attr(identities or {}))
        self.attrs = {
            "device": _device_description(),
            **dict(attrs or {}),
            "versions": _json_attr(package_versions()),
        }
        self.coords = {name: list(values) for name, values in dims.items()}
        for name, values in self.coords.items():
            if len(set(values)) != len(values):
                raise ValueError(f"dimension {name!r} has repeated values {values}")
        self.ds = xr.Dataset(coords=self.coords)
        self._deferred, self._unwritten, self._moved = 0, False, False
        if self.path.exists():
            try:
                with xr.open_dataset(self.path, engine="h5netcdf") as stored:
                    stored = stored.load()
            except OSError as err:
                # dode writes atomically, so an unreadable file was cut short elsewhere (a copy, a full
                # disk) or is not a NetCDF4 file at all; h5py's own message names neither case
                raise IncompatibleResults(
                    f"{self.path} is not a readable NetCDF4 results file ({type(err).__name__}: {err}); "
                    "it may be truncated or written by another program. Move or delete it to recompute, "
                    "or use another results_dir."
                ) from err
            stored_key = json.loads(stored.attrs.get("comparability_key", "null"))
            if stored_key != self.key:
                raise IncompatibleResults(self._describe_mismatch(stored_key))
            stored_identities = json.loads(stored.attrs.get("identities", "{}"))
            changed = self._changed_identities(stored_identities)
            if changed:
                raise IncompatibleResults(
                    f"{self.path} holds results of {'; '.join(changed)}. Numbers of the two are not "
                    f"comparable and are never mixed: to start a fresh file, move {self.path} away (or delete "
                    "it), or pass another results_dir; to keep adding to this one, restore what changed."
                )
            if "model" in self.coords and "model" in stored.coords:
                stored, stored_identities = self._restore_aside(stored, stored_identities)
                stored, stored_identities = self._set_aside(stored, stored_identities)
            self.identities = {**stored_identities, **self.identities}
            self._note_earlier_versions(stored.attrs)
            self._merge(stored)
            if self._moved:
                self.flush()  # the file holds this run's models only from now on

    def _note_earlier_versions(self, stored_attrs) -> None:
        """Warn when the stored cells were computed under other versions of :data:`NUMBER_PACKAGES`, and
        carry every earlier set of versions on into the file (``earlier_versions``)."""
        earlier = json.loads(stored_attrs.get("earlier_versions", "[]"))
        if "versions" not in stored_attrs:  # written before files recorded versions: nothing to compare
            return
        stored, now = json.loads(stored_attrs["versions"]), json.loads(self.attrs["versions"])
        changed = [name for name in NUMBER_PACKAGES if stored.get(name) != now.get(name)]
        if stored not in earlier and stored != now:
            earlier.append(stored)
        if earlier:
            self.attrs["earlier_versions"] = _json_attr(earlier)
        if changed:
            what = ", ".join(f"{name} {stored.get(name, '<absent>')} (now {now[name]})" for name in changed)
            warnings.warn(
                f"{self.path} was written under {what}: its stored cells are kept and the new ones are "
                "computed under the current versions, so the file mixes the two (recorded in its attribute "
                "earlier_versions). Move the file away to recompute everything under one set of versions.",
                VersionsChangedWarning,
                stacklevel=3,
            )

    def _describe_mismatch(self, stored_key) -> str:
        if not isinstance(stored_key, dict):
            return f"{self.path} was not written by a dode ResultStore; move it away to recompute"
        diffs = []
        for name in sorted(set(stored_key) | set(self.key)):
            old, new = stored_key.get(name, "<absent>"), self.key.get(name, "<absent>")
            if old != new:
                diffs.append(f"{name}: stored {old!r}, asked {new!r}")
        return (
            f"{self.path} holds results computed with other parameters ({'; '.join(diffs)}). "
            "They are not comparable with this run; move or delete the file, or use another results_dir."
        )

    def _changed_identities(self, stored: dict) -> list[str]:
        """``"model 'x' with another checkpoint_sha256 (stored a, now b)"`` for each changed field."""
        out = []
        if "model" not in self.coords and stored and self.identities and set(stored) != set(self.identities):
            # a file without a model dimension holds one model's cells: another model would land on them
            out.append(
                f"model {', '.join(sorted(stored))} (this run: model {', '.join(sorted(self.identities))})"
            )
        for name in sorted(set(stored) & set(self.identities)):
            old, new = _flatten(stored[name]), _flatten(self.identities[name])
            fields = [f for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)]
            if fields:
                diffs = ", ".join(
                    f"{f} (stored {old.get(f, '<absent>')!r}, now {new.get(f, '<absent>')!r})" for f in fields
                )
                out.append(f"model {name!r} with another {diffs}")
        return out

    def _read_aside(self, adding: bool = False):
        """The kept-aside cells; ``None`` when there are none, or when they were computed under another key
        (which no run of this file can bring back: refused when ``adding`` to them, rather than lost)."""
        import xarray as xr

        path = aside_path(self.path)
        if not path.exists():
            return None
        with xr.open_dataset(path, engine="h5netcdf") as aside:
            aside = aside.load()
        if json.loads(aside.attrs.get("comparability_key", "null")) == self.key:
            return aside
        if adding:
            raise IncompatibleResults(
                f"{self.path} holds models this run leaves out, to be kept aside in {path}, which holds cells "
                "computed with other parameters: move one of the two files away, or pass another results_dir"
            )
        return None

    def _restore_aside(self, stored, identities: dict):
        """Bring back the kept-aside cells of this run's models that the file lacks, where the model's
        identity is the same; the aside file keeps the others (or goes, when none is left)."""
        aside = self._read_aside()
        if aside is None:
            return stored, identities
        kept = json.loads(aside.attrs.get("identities", "{}"))
        back = [
            m
            for m in aside.coords["model"].values.tolist()
            if m in self.coords["model"]
            and m not in stored.coords["model"].values.tolist()
            and kept.get(m) == self.identities.get(m)
        ]
        if not back:
            return stored, identities
        stored = stored.combine_first(aside.sel({"model": back}))
        identities = {**identities, **{m: kept[m] for m in back}}
        self._moved = True
        self._write_aside(aside.drop_sel({"model": back}), {m: v for m, v in kept.items() if m not in back})
        return stored, identities

    def _set_aside(self, stored, identities: dict):
        """Move the cells of the models this run leaves out to the aside file (joining the models already
        there; the newer cells of a model win)."""
        extra = [m for m in stored.coords["model"].values.tolist() if m not in self.coords["model"]]
        if not extra:
            return stored, identities
        moved = stored.sel({"model": extra})
        aside, kept = self._read_aside(adding=True), {}
        if aside is not None:
            kept = json.loads(aside.attrs.get("identities", "{}"))
            stale = [m for m in extra if m in aside.coords["model"].values.tolist()]
            moved = moved.combine_first(aside.drop_sel({"model": stale}))
        kept = {**kept, **{m: identities[m] for m in extra if m in identities}}
        self._write_aside(moved, kept)
        self._moved = True
        return stored.drop_sel({"model": extra}), {m: v for m, v in identities.items() if m not in extra}

    def _write_aside(self, aside, identities: dict) -> None:
        path = aside_path(self.path)
        if aside.sizes.get("model", 0) == 0:
            path.unlink(missing_ok=True)
            return
        aside.attrs.update(
            {
                "comparability_key": _json_attr(self.key),
                "identities": _json_attr(identities),
                "model": ", ".join(aside.coords["model"].values.tolist()),
                "description": f"cells of models kept aside from {self.path.name} (book/results_schema.md)",
            }
        )
        write_netcdf(aside, path)

    def _merge(self, stored) -> None:
        """Grow the sweep to the union of the stored and the asked coordinates, keeping stored cells."""
        for name in stored.coords:
            if name not in self.coords:
                self.coords[name] = list(stored.coords[name].values.tolist())
            else:
                extra = [v for v in stored.coords[name].values.tolist() if v not in self.coords[name]]
                self.coords[name] = self.coords[name] + extra
        # the stored variables' encodings go: they fix the file's string widths, and a longer model or method
        # name of this run would be written cut to them ("digits-edm-mini" as a second "digits-edm")
        self.ds = stored.drop_encoding().reindex(
            {name: self.coords[name] for name in stored.dims if name in self.coords}
        )
        for name, values in self.coords.items():
            if name not in self.ds.coords:
                self.ds = self.ds.assign_coords({name: values})

    # ------------------------------------------------------------------ reading
    def has(self, var: str, **cell) -> bool:
        """Whether ``var`` holds a finished value at ``cell``.

        Cells are written whole, so one entry that is not NaN means the cell is done (fitted lambdas of a
        data-prediction model legitimately hold NaN where there is no previous output); an infinite one is a
        finished result too (a sampler that diverged), not a cell to compute again."""
        if var not in self.ds:
            return False
        sel = self._sel(var, cell)
        if sel is None:
            return False
        values = np.asarray(sel.values)
        if values.dtype.kind == "f":
            return bool(np.any(~np.isnan(values)))
        return True

    def get(self, var: str, **cell):
        sel = self._sel(var, cell)
        if sel is None:
            raise KeyError(f"{var} has no cell {cell}")
        return sel.values

    def _sel(self, var: str, cell: dict):
        arr = self.ds[var]
        for name, value in cell.items():
            if name not in arr.dims or value not in arr.coords[name].values.tolist():
                return None
        return arr.sel(cell)

    # ------------------------------------------------------------------ writing
    def put(self, var: str, value, extra_dims: dict[str, list] | None = None, **cell) -> None:
        """Store ``value`` at ``cell`` of ``var`` and write the file atomically (inside :meth:`together`: at
        the end of the block, with the block's other puts).

        ``extra_dims`` gives a value's own dimensions beyond the sweep (e.g. ``evaluation``, ``param`` of
        fitted lambdas); shorter values are padded with NaN to the stored extent.
        """
        import xarray as xr

        for name in cell:
            if name not in self.coords:
                raise ValueError(f"unknown dimension {name!r}; this store has {list(self.coords)}")
            if cell[name] not in self.coords[name]:
                raise ValueError(f"{name}={cell[name]!r} is not in the sweep {self.coords[name]}")
        extra_dims = dict(extra_dims or {})
        if var not in self.ds:
            dims = list(cell) + list(extra_dims)
            shape = [len(self.coords[d]) for d in cell] + [len(v) for v in extra_dims.values()]
            coords = {d: self.coords[d] for d in cell} | extra_dims
            self.ds[var] = xr.DataArray(np.full(shape, np.nan), dims=dims, coords=coords)
        if not self.ds[var].values.flags.writeable:  # a view left by a selection (a model kept aside)
            self.ds[var] = self.ds[var].copy(deep=True)
        arr = self.ds[var]
        for name, values in extra_dims.items():
            current = arr.coords[name].values.tolist()
            if len(values) > len(current):
                self.ds = self.ds.reindex({name: values})
                arr = self.ds[var]
        value = np.asarray(value, dtype=np.float64)
        target = arr.loc[cell]
        if value.shape != target.shape:
            padded = np.full(target.shape, np.nan)
            padded[tuple(slice(0, n) for n in value.shape)] = value
            value = padded
        self.ds[var].loc[cell] = value
        self._unwritten = True
        if not self._deferred:
            self.flush()

    def describe(self, var: str, **attrs) -> None:
        """Set attributes of ``var`` (strings or numbers: NetCDF holds no bools, None or dicts) and write the
        file (inside :meth:`together`: with the block's puts)."""
        if var not in self.ds:
            raise KeyError(f"{var} is not in {self.path}; put a value before describing it")
        bad = {k: v for k, v in attrs.items() if isinstance(v, bool) or not isinstance(v, str | int | float)}
        if bad:
            raise ValueError(f"attributes must be strings or numbers (NetCDF), got {bad}")
        if all(self.ds[var].attrs.get(k) == v for k, v in attrs.items()):
            return
        self.ds[var].attrs.update(attrs)
        self._unwritten = True
        if not self._deferred:
            self.flush()

    @contextlib.contextmanager
    def together(self):
        """Write every ``put`` of the block in one go at its end (nothing, if the block raises).

        A result made of several variables (a trajectory's norms, pixels and distances) then reaches the
        file whole or not at all, and a block of many small puts costs one file write instead of many."""
        outermost = self._deferred == 0
        if outermost:  # what memory holds before the block, restored if it raises
            saved = (self.ds.copy(deep=True), self._unwritten)
        self._deferred += 1
        try:
            yield self
        except BaseException:
            if outermost:
                self.ds, self._unwritten = saved
            raise
        finally:
            self._deferred -= 1
        if outermost and self._unwritten:
            self.flush()

    def flush(self) -> None:
        self.ds.attrs.update({k: str(v) for k, v in self.attrs.items()})
        self.ds.attrs["comparability_key"] = _json_attr(self.key)
        self.ds.attrs["identities"] = _json_attr(self.identities)
        write_netcdf(self.ds, self.path)
        self._unwritten = False

    def dataset(self):
        """The stored data (an xarray Dataset)."""
        return self.ds

    def at(self, **fixed) -> StoreView:
        """A view that reads and writes the cells of ``fixed`` coordinates only (e.g. ``model="x"``), so
        code written for one model fills its part of a multi-model file unchanged."""
        for name, value in fixed.items():
            if name not in self.coords or value not in self.coords[name]:
                raise ValueError(f"{name}={value!r} is not in this store's {name} coordinates")
        return StoreView(self, fixed)


class StoreView:
    """The cells of a :class:`ResultStore` at fixed coordinates (:meth:`ResultStore.at`)."""

    def __init__(self, store: ResultStore, fixed: dict):
        self.store, self.fixed = store, dict(fixed)
        self.path = store.path

    def has(self, var: str, **cell) -> bool:
        return self.store.has(var, **self.fixed, **cell)

    def get(self, var: str, **cell):
        return self.store.get(var, **self.fixed, **cell)

    def put(self, var: str, value, extra_dims: dict[str, list] | None = None, **cell) -> None:
        self.store.put(var, value, extra_dims=extra_dims, **self.fixed, **cell)

    def describe(self, var: str, **attrs) -> None:
        self.store.describe(var, **attrs)

    def together(self):
        return self.store.together()
