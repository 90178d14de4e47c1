"""The paper checks of ``benchmarks/reproduce_paper.py``, one module per experiment.

- ``harness``: ``Config``, timing (``stopwatch``), small statistics (``spearman``, ``l1``, ...), the
  real-image tasks (``RealTask``, ``RealData``) and the worker processes that embed them.
- ``analytic``: 1. analytic FIM of a two-layer sigmoid network [Suppl. A].
- ``toy``: 2. toy tasks on the unit square [Fig. 5].
- ``taxonomy``: 3. taxonomy [Fig. 2 centre] (``TAXONOMY``, ``tree_distance``, ``knn_curve``).
- ``difficulty``: 4. embedding norm vs task difficulty [Fig. 2 right].
- ``domains``: 5. task vs domain embedding [Fig. 1].
- ``clustering``: 6. clustered similarity matrix [Fig. 2 left] (``dendrogram_purity``, ``purity_test``).
- ``agreement``: how far the estimators (relative, the library default; montecarlo; variational;
  exact) agree (experiments 1-5).
- ``verdicts``: the paper's claims, our verdicts on the library default estimator, and the checks that
  set the exit status.
- ``report``: the Markdown report and the JSON.

The command line and the order of the experiments are in ``benchmarks/reproduce_paper.py``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # hf_task2vec and the test oracle tests.analytic
