"""The meta-tasks of the model-selection benchmark: each module here defines ``META_TASK`` (a
``selection.harness.MetaTask``); ``selection.harness.meta_tasks()`` finds them, and
``benchmarks/model_selection.py --meta-task <name>`` runs one."""
