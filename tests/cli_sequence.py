"""Run under `accelerate launch` by tests/test_launch_bf16.py: `aps-zoo` commands one after the other in the one
launched process, each as `python -m aps_zoo.cli ...` would run it there: Accelerate's state (what the launcher
put in the environment, read by the first Accelerator) is reset before each command, so every command builds
its accelerator from the launcher's settings and its recipe alone, not from the command before it.

    cli_sequence.py JOBS_JSON
        JOBS_JSON: a JSON list of argument lists of `aps-zoo`; writes EXIT_CODES.json next to it, one exit
        code per command (a command that fails does not stop the ones after it).
"""
import json
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState

from aps_zoo.cli import main

if __name__ == '__main__':
    jobs = Path(sys.argv[1])
    codes = []
    for argv in json.loads(jobs.read_text()):
        AcceleratorState._reset_state(reset_partial_state=True)  # a single process: no process group to keep
        GradientState._reset_state()
        codes.append(main(argv))
    jobs.with_name('EXIT_CODES.json').write_text(json.dumps(codes))
