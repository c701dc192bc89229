"""The companion: what turns the core into the book's experiments.

``protocols`` (each notebook's settings per profile), ``experiments`` (the sweeps the notebooks run),
``results`` (the NetCDF results files), ``analysis`` (Fig. 2, 5, 7, 11), ``timing`` (Tab. 1), ``claims``
and ``paper`` (the paper's numbers and the verdicts), ``plots``, ``model_report``, ``run_notebooks``,
``preflight`` (a run's files, checked before any sampling) and ``build_book``. Nothing in the core imports it.
"""

import warnings

# diffusers (imported by the peers page and the zoo) imports tqdm.auto, which in a notebook kernel without
# ipywidgets warns that it falls back to text bars; the book draws no bars (dode.progress), so the warning
# would only print onto a page
warnings.filterwarnings("ignore", message="IProgress not found")
