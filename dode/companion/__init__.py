"""The companion: what turns the core into the book's experiments.

``protocols`` (each notebook's settings per profile), ``experiments`` (the sweeps the notebooks run),
``results`` (the NetCDF results files), ``analysis`` (Fig. 2, 5, 7, 11), ``timing`` (Tab. 1), ``claims``
and ``paper`` (the paper's numbers and the verdicts), ``plots``, ``model_report``, ``run_notebooks``,
``preflight`` (a run's files, checked before any sampling) and ``build_book``. Nothing in the core imports it.
"""
