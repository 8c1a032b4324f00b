"""How much a canonical grid costs thin blood before any model runs: the true mask of a fine scan taken to the grid
(thresholded there) and back, scored against itself (``grid_ceiling`` of ``bench/hemorrhage_gpu.py``).

    python bench/ct_grid_ceiling.py            # 1 mm isotropic SAH heads (seed 1000), grids 1x1x5 and 1x1x2.5 mm

Writes docs/results/hemorrhage_real/grid_ceiling.json; the choice of the 2.5 mm grid of preset ``real`` rests on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> dict:
    from hemorrhage_gpu import grid_ceiling

    from lowrank_vision.core.files import write_json
    from lowrank_vision.datasets.ct.geometry import CanonicalGrid
    from lowrank_vision.datasets.ct.phantom import HEAD_PRESETS, synthesize_head

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--grids", nargs="+", default=["1,1,5", "1,1,2.5"], help="canonical spacings in mm, x,y,z")
    ap.add_argument("--out", default="docs/results/hemorrhage_real/grid_ceiling.json")
    args = ap.parse_args(argv)
    grids = {g: CanonicalGrid(tuple(float(v) for v in g.split(","))) for g in args.grids}
    rows = []
    for i in range(args.cases):
        _, mask, info = synthesize_head("sah", i, seed=1000, config="iso")
        rows.append({"case": f"sah_{i:03d}", "blood_ml": info["blood_ml"],
                     **{g: grid_ceiling(mask > 0, HEAD_PRESETS["iso"].affine, grid) for g, grid in grids.items()}})
        print(rows[-1], flush=True)
    res = {"command": "python bench/ct_grid_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "data": "realistic SAH heads, 1 mm isotropic (HEAD_PRESETS['iso']), seed 1000", "rows": rows,
           "mean": {g: float(np.mean([r[g] for r in rows])) for g in grids}}
    write_json(args.out, res, indent=1)
    return res


if __name__ == "__main__":
    main()
