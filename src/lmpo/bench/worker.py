"""One benchmark side in its own process: ``python -m lmpo.bench.worker JOB.json``.

Protocol (one JSON object a line): the worker writes ``ready`` (after set-up), then one
``step`` per step it is asked for (``step`` is the data step number: ``first_step`` of the
job, default 1, for the first), then ``done``; or ``error`` / ``unavailable`` and exits.
The parent writes ``step`` (run the next step) or ``exit`` on stdin. Anything the
libraries print goes to stderr: the protocol has stdout to itself. A worker killed from
outside (the kernel's OOM killer sends SIGKILL) just stops writing; the parent tells why
from the exit code (``lmpo.bench.run.Worker``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def main(job_path: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries land in the log, not in the protocol
    sys.stdout = sys.stderr

    def send(event: str, **data) -> None:
        proto.write(json.dumps({"event": event, **data}) + "\n")
        proto.flush()

    def wait() -> None:
        line = sys.stdin.readline()
        if line.strip() != "step":  # "exit" or the parent went away
            raise SystemExit(0)

    job = json.loads(Path(job_path).read_text())
    try:
        import torch

        from lmpo.bench.sides import SIDES, Unavailable, current_rss_mb, peak_rss_mb

        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        t0 = time.perf_counter()
        try:
            side = SIDES[(job["tool"], job["spec"]["kind"])](
                job, Path(job["workdir"]), job.get("threads")
            )
        except Unavailable as e:
            send("unavailable", message=str(e))
            return 0

        def ready() -> None:
            send(
                "ready",
                setup_s=time.perf_counter() - t0,
                rss_after_setup_mb=current_rss_mb(),
                peak_rss_mb=peak_rss_mb(),
                threads=torch.get_num_threads(),
                **side.info,
            )

        step = [int(job.get("first_step", 1)) - 1]

        def emit(rec: dict) -> None:
            step[0] += 1
            send("step", step=step[0], record=rec)

        side.run(wait, emit, job["total_steps"], ready)
        send("done", peak_rss_mb=peak_rss_mb())
        return 0
    except SystemExit:
        raise
    except BaseException as e:  # reported to the parent, which names the tool and config
        traceback.print_exc()
        send("error", message=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
