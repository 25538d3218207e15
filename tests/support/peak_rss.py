"""A torchrun worker that runs `forge-trainer <args>` (the real command line) and writes its peak host memory
as benchmarks/bench_load_base.py measures it: the kernel's VmHWM with torch, the trainer and FSDP imported
(`idle_mib`), and right before and after each time the trainer placed and loaded a model (`before_mib`,
`loaded_mib`, in order: the policy, then the RL reference when there is one), to `<out>.<rank>.json`.

    torchrun ... -m tests.support.peak_rss <out> train --config <config>
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def vmhwm_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    """Run the trainer's command line, recording VmHWM around model loading."""
    out, args = sys.argv[1], sys.argv[2:]
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (imported before `idle` is read)

    from forge_trainer import cli
    from forge_trainer.train import parallel, posttrain, rl, sft

    before: list[float] = []
    loaded: list[float] = []
    place = parallel.wrap_model

    def wrap_and_measure(*a: Any, **kw: Any) -> Any:
        before.append(vmhwm_mib())
        model = place(*a, **kw)  # the trainer's own wrap_model, unchanged: only VmHWM is read after it
        loaded.append(vmhwm_mib())
        return model

    for module in (sft, rl, posttrain):
        module.wrap_model = wrap_and_measure  # type: ignore[attr-defined]
    idle = vmhwm_mib()
    code = cli.main(args)
    Path(f"{out}.{os.environ['RANK']}.json").write_text(json.dumps({"idle_mib": idle, "before_mib": before,
                                                                         "loaded_mib": loaded}))
    return code


if __name__ == "__main__":
    sys.exit(main())
