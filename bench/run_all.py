"""Run every benchmark script in bench/ (make bench); the attribution table in its --quick form.

The full attribution table (resnet18 and resnet50, B = 1 and 8) takes about an hour on two CPU
cores: run ``python bench/bench_attribution.py`` for it.
"""

import runpy
import sys
from pathlib import Path

ARGS = {"bench_attribution.py": ["--quick"], "bench_scale.py": ["--quick"]}

for script in sorted(Path(__file__).parent.glob("bench_*.py")):
    args = ARGS.get(script.name, [])
    print(f"\n== {script.name} {' '.join(args)}".rstrip(), flush=True)
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")
