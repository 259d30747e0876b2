"""``tributary``, the operator's command line: the composition root that wires every other package.

- ``main``: the commands (local stack, topology, migrations, lag, workers, audit, dead letters, run).
- ``services``: the processes that make up the system, as ``tributary run`` starts them.
- ``supervisor``: runs, restarts and stops those processes.
"""
