"""Sub-commands of the ``hf-task2vec`` CLI, one module per area; each defines ``register(subparsers)``.

A command handler receives the parsed ``argparse.Namespace`` and returns the process exit code.
"""
