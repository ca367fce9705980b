"""Evaluation reports: tables and JSON (:mod:`.tables`), figures (:mod:`.figures`).

The modules take plain arrays and the dicts of
:func:`mrfengine.metrics.evaluate_subject`, never a cohort store, so they
serve ``mrfengine evaluate`` and notebooks alike.  Import the submodules
directly (``from mrfengine.report import figures``): figures needs
matplotlib, which this package does not import on its own.
"""
