"""Check, before any sampling, that a run finds every file it needs.

    python -m dode.preflight --profile paper --params notebooks/paper.example.yaml [--only NAME ...]

For every notebook of the book under the profile (or the ones named by ``--only``), with the parameters of
the run configuration file (``--params``, the file ``python -m dode.run_notebooks`` and ``papermill -f``
take), it collects the models the notebook loads and checks, in this order:

* every model: its checkpoint and the clone of its authors' code are there, and the model loads (on the
  CPU; the checkpoint's content hash is computed here once, as the notebooks will). Each model is loaded in
  isolation (:func:`isolated_imports`): a clone that an earlier model's options put on ``sys.path`` is gone
  again, so a model whose own options lack the clone is reported, as the notebook that loads it alone
  would fail. The fix named is the missing item's: the fetch command of a missing checkpoint, the
  ``git clone`` of missing or wrong authors' code;
* every model scored by FID: its reference statistics are there, hold 2048-d Inception moments, and are of
  the model's resolution; pytorch-fid's Inception weights are in the torch hub cache and load;
* every model scored by FD (the embedded digits): the digit classifier and its reference statistics load;
* the device the run asks for exists, and paths in the file are absolute (notebooks run in ``notebooks/``,
  where a relative path would point elsewhere).

Everything missing is listed at once, each with the command that fetches it on a machine with internet;
the exit status is 0 when nothing is missing, 1 otherwise. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "models_of", "preflight", "main"]


@dataclass
class Check:
    """One checked item: what, whether it is there and loads, and what to do if not."""

    what: str
    ok: bool
    detail: str = ""
    fix: str = ""


def models_of(cfg: dict) -> list[str]:
    """The zoo names a notebook's resolved parameters load (``model``, ``models`` or ``panels``)."""
    names = list(cfg.get("models") or [])
    if cfg.get("model"):
        names.append(cfg["model"])
    names += [panel[0] for panel in cfg.get("panels") or []]
    return list(dict.fromkeys(names))


def _notebook_settings(stems, profile: str, params: dict) -> dict[str, dict]:
    """Each notebook's parameters under ``profile``, with the run file's values where the notebook has the
    parameter (as the runner passes them)."""
    from dode.companion.protocols import PROTOCOLS

    out = {}
    for stem in stems:
        table = dict(PROTOCOLS[stem][profile])
        table.update({k: v for k, v in params.items() if k in table and v is not None})
        out[stem] = table
    return out


def _relative_paths(params: dict) -> list[Check]:
    checks = []
    for name, options in (params.get("model_options") or {}).items():
        for key, value in (options or {}).items():
            if (key == "path" or key.endswith("_repo")) and isinstance(value, str):
                if "://" not in value and not Path(value).is_absolute():
                    checks.append(
                        Check(
                            f"model_options.{name}.{key}",
                            False,
                            f"{value!r} is relative",
                            "use an absolute path (notebooks run in notebooks/)",
                        )
                    )
    stats = params.get("fid_stats")
    if isinstance(stats, str) and not Path(stats).is_absolute():
        checks.append(Check("fid_stats", False, f"{stats!r} is relative", "use an absolute path"))
    return checks


@contextlib.contextmanager
def isolated_imports():
    """Leave ``sys.path`` as it was, and forget the modules imported from the folders put on it meanwhile
    (the clones of authors' code a model loader adds): the next model's check cannot lean on them."""
    before = list(sys.path)
    try:
        yield
    finally:
        added = [Path(p).resolve() for p in sys.path if p not in before and p]
        sys.path[:] = before
        for key, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None) or next(
                iter(getattr(module, "__path__", None) or []), None
            )
            if where and any(root in Path(where).resolve().parents for root in added):
                del sys.modules[key]
        importlib.invalidate_caches()


def _check_model(name: str, options: dict):
    """``(Check, Denoiser or None)`` for loading ``name`` with its options, in isolation, with the fix of
    what is missing: the checkpoint (its fetch command) or the clone of the authors' code (``git clone``)."""
    from dode import zoo

    meta = zoo.MODELS.get(name)
    if meta is None:
        return Check(f"model {name}", False, "not a dode.zoo model", f"one of {sorted(zoo.MODELS)}"), None
    clone = zoo.CLONES.get(meta["family"])
    get_clone = (
        f"`git clone {clone['url']}`, passed as model_options.{name}.{clone['option']}" if clone else ""
    )
    try:
        with isolated_imports():
            den = zoo.load(name, device="cpu", **options)
    except (zoo.CloneMissing, zoo.EDMPickleImportError) as err:
        return Check(f"model {name}", False, f"{type(err).__name__}: {err}", get_clone), None
    except Exception as err:  # any other reason it does not load: its checkpoint is missing or not the one
        fix = f"`{meta['fetch']}`, passed as model_options.{name}.path" if "fetch" in meta else ""
        if clone and not options.get(clone["option"]):  # the clone will be needed next
            fix += f"; {get_clone}"
        return Check(f"model {name}", False, f"{type(err).__name__}: {err}", fix), None
    sha = den.info.get("checkpoint_sha256") or ""
    where = den.info.get("checkpoint") or den.info.get("source", "")
    return Check(f"model {name}", True, f"{where} (sha256 {sha[:12]})"), den


def _check_reference(name: str, info: dict, fid_stats) -> Check:
    """The FID statistics of a model (``info``: the loaded model's, else its zoo listing)."""
    from dode import metrics

    ref = info["fid_reference"]
    path = metrics.reference_stats_path(ref, fid_stats)
    entry = metrics.REFERENCE_STATS[ref]
    fix = f"`{entry['source']}`, saved as {path}"
    what = f"FID statistics {ref} for {name}"
    try:
        stats = metrics.reference_stats(ref, fid_stats)
    except Exception as err:  # missing, unreadable or of the wrong dimension: reported alike
        return Check(what, False, f"{type(err).__name__}: {err}", fix)
    resolution = int(info["resolution"])
    if resolution != int(entry["resolution"]):
        return Check(
            what,
            False,
            f"{name} samples {resolution}x{resolution} images, the statistics are of "
            f"{entry['resolution']}x{entry['resolution']} images",
            fix,
        )
    return Check(what, True, f"{path} (n={stats.n or 'unknown'})")


def _check_inception() -> Check:
    from dode import metrics

    path = metrics.inception_weights_path()
    fix = f"`wget {metrics.INCEPTION_WEIGHTS_URL} -P {path.parent}`"
    try:
        metrics.FID(device="cpu")
    except Exception as err:  # missing or not loadable by pytorch-fid
        return Check("Inception weights", False, f"{type(err).__name__}: {err}", fix)
    return Check("Inception weights", True, str(path))


def _check_fd() -> Check:
    from dode import metrics

    try:
        metrics.FD()
    except Exception as err:  # classifier or its reference statistics missing or stale
        return Check("FD classifier and statistics", False, f"{type(err).__name__}: {err}", "`make models`")
    return Check("FD classifier and statistics", True, str(metrics.DIGITS_REFERENCE_PATH))


def _check_device(device: str) -> Check:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return Check(f"device {device}", False, "torch sees no CUDA device", "run on a GPU box or set device")
    return Check(f"device {device}", True)


def preflight(profile: str, params: dict, stems=None) -> list[Check]:
    """Every check of the module doc for the notebooks ``stems`` (default: all of the protocols)."""
    from dode import zoo
    from dode.companion.protocols import PROTOCOLS

    stems = list(stems or PROTOCOLS)
    unknown = sorted(set(stems) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"notebooks must be among {sorted(PROTOCOLS)}, got {unknown}")
    settings = _notebook_settings(stems, profile, params)
    checks = _relative_paths(params)
    for device in dict.fromkeys(str(cfg.get("device", "cpu")) for cfg in settings.values()):
        checks.append(_check_device(device))
    model_options = params.get("model_options") or {}
    fid_stats = params.get("fid_stats")
    loaded = {}
    names = list(dict.fromkeys(n for cfg in settings.values() for n in models_of(cfg)))
    for name in names:
        check, den = _check_model(name, dict(model_options.get(name) or {}))
        checks.append(check)
        if den is not None:
            loaded[name] = den
    # models that do not load are still checked for their statistics, by their listing
    infos = {n: loaded[n].info if n in loaded else zoo.MODELS[n] for n in names if n in zoo.MODELS}
    scored_by_fid = [n for n, info in infos.items() if info.get("fid_reference", "fd") != "fd"]
    for name in scored_by_fid:
        checks.append(_check_reference(name, infos[name], fid_stats))
    if scored_by_fid:
        checks.append(_check_inception())
    if len(scored_by_fid) < len(infos):
        checks.append(_check_fd())
    return checks


def report(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"  {'ok' if c.ok else 'MISSING':8} {c.what}" + (f": {c.detail}" if c.detail else ""))
        if not c.ok and c.fix:
            lines.append(f"           fetch/fix: {c.fix}")
    missing = [c for c in checks if not c.ok]
    lines.append(
        f"{len(missing)} problem(s): {', '.join(c.what for c in missing)}"
        if missing
        else "everything is there"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dode.companion.protocols import PROTOCOLS
    from dode.companion.run_notebooks import PROFILES, BookLayoutError, read_params

    parser = argparse.ArgumentParser(
        prog="python -m dode.preflight", description="Check a run's checkpoints, clones and statistics."
    )
    parser.add_argument("--profile", default="paper", choices=PROFILES, help="run profile (default: paper)")
    parser.add_argument("--params", type=Path, metavar="FILE", help="the run configuration file (YAML)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"only these notebooks ({', '.join(PROTOCOLS)})"
    )
    args = parser.parse_args(argv)
    try:
        params = read_params(args.params) if args.params else {}
        checks = preflight(args.profile, params, args.only)
    except (BookLayoutError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"preflight: profile {args.profile}, parameters {args.params or '(none)'}")
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1
