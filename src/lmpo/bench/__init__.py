"""`lmpo bench`: lmpo and TRL on identical settings, measured in one run.

Each tool runs in its own worker process (so peak RSS is per tool). By default (``--alternate
rounds``) only one worker is alive at a time: per round each tool gets a fresh process for a
warm-up and the measured steps, and the order flips every round, so one tool's peak memory
never meets the other's resident set and slow drifts of a shared machine hit both sides
alike; ``--alternate steps`` keeps both alive and alternates single steps. See ``lmpo.bench.run`` for the measurements and ``lmpo.bench.specs`` for the
configurations. Importing this package is cheap (no torch); the CLI parser lives in
``lmpo.bench.cli``.
"""
