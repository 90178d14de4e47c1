"""The model-selection benchmark of ``benchmarks/model_selection.py``, one module per part.

- ``config``: the source tasks (``ALL_SOURCES``), ``Config`` (its ``key`` names the cache files), ``FULL`` /
  ``QUICK``.
- ``data``: image pools of the offline datasets, the targets (``TargetSpec``, ``make_targets``, ``split_target``),
  the ground truth (``linear_probe_error``) and cached Task2Vec embeddings (``embed_cached``).
- ``experts``: ``Expert``, fine-tuning (``train_expert``), the untouched network (``generic_expert``), features
  on the target pools (``expert_outputs``); all cached.
- ``peers``: the peer scores (``PEERS``), ``summarise``, the two-stage selector (``two_stage``), ``METHODS``,
  ``aggregate`` and ``table2_with_costs``.
- ``harness``: ``run`` (what every meta-task measures the same way, per seed), ``Run`` (what it measured),
  ``MetaTask`` and ``meta_tasks()``.
- ``report``: the report pieces the meta-tasks share (``render_two_stage``, ``_checks_and_targets``, ``_pm``,
  ``machine_info``).
- ``across``: what the meta-tasks with experts of several networks share: the networks, which network each selector
  picks, random tie-breaks, the peers' ties, the issue's targets and their report (``finish_across``).
- ``meta_tasks/``: one module per meta-task, each defining ``META_TASK = MetaTask(...)`` (its experts, options,
  report): ``lite0`` (the default: Table 2/1, the expert index, the library check, the search speed),
  ``architectures`` and ``zoo`` (the shipped zoo's image experts). A new meta-task is a new module there;
  ``--meta-task`` lists it.

The command line is ``benchmarks/model_selection.py``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # hf_task2vec
