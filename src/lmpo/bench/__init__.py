"""`lmpo bench`: lmpo and TRL on identical settings, measured in one run.

Each tool runs in its own worker process (so peak RSS is per tool); the parent alternates
them step by step after one warm-up step each, so slow drifts of a shared machine hit both
sides alike. See ``lmpo.bench.run`` for the measurements and ``lmpo.bench.specs`` for the
configurations. Importing this package is cheap (no torch); the CLI parser lives in
``lmpo.bench.cli``.
"""
