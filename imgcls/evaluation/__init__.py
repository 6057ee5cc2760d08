"""Evaluation and prediction: the library behind ``imgcls eval`` and ``imgcls predict``.

Modules, imported only when needed so ``imgcls predict one.jpg`` never pays for
scikit-learn, matplotlib or rich tables:

* :mod:`~imgcls.evaluation.inference`: batched, prefetched inference over image files
  (``predict_batches``), shared by eval and predict so both give the same probabilities.
* :mod:`~imgcls.evaluation.metrics`: metrics (scikit-learn), calibration, error analysis,
  robustness grouping.
* :mod:`~imgcls.evaluation.evaluate`: record selection, label mapping by class name,
  one report per model, model comparison.
* :mod:`~imgcls.evaluation.report`: the rich report on stderr.
* :mod:`~imgcls.evaluation.plots`: ``--report DIR`` pictures.
* :mod:`~imgcls.evaluation.predicting`: predict's input gathering, model resolution and output rows.
"""
