"""How a pool's children start, as one subsystem: ``spawner`` (``Spawner``: forked from a preloaded
zygote, or exec'd, and why), ``zygote`` (the supervisor's side of the zygote: start, fork, close),
``seed`` (the zygote ``corral run`` launches before it knows the children), ``process``
(``ChildProcess``: spawn, pidfd reaping, output), ``childenv`` (a child's environment and the import
check), ``strays`` (reaping orphans below our children as the subreaper) and ``linux`` (prctl).
The child's side of the zygote is ``corral.workers.zygote``."""
