"""Generate the dose-region training data of patent 000 (section C) -- a thin command-line wrapper.

    python -m datasets.region_data --n 200 --out datasets/region_full --planner conformity
    python -m datasets.region_data --n 12 --out /tmp/region_ci --planner standin   # CI-size

All logic lives in :func:`rtlab.methods.region_model.generate_dataset`; see
``docs/methods/region_model.md`` for the file format. ``--train`` additionally trains the small
U-Net on the result and writes it to ``--model-out``.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.region_data", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of cases (default 200 -> 150/25/25)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs="+", default=[32], help="grid voxels (one or three numbers)")
    ap.add_argument("--spacing", type=float, nargs="+", default=[4.0], help="voxel size mm (one or three)")
    ap.add_argument("--planner", choices=["conformity", "standin"], default="conformity",
                    help="conformity: rtlab dose engine + conformity optimiser (real data); standin: fast test data")
    ap.add_argument("--split", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--train", action="store_true", help="train the U-Net on the data set afterwards")
    ap.add_argument("--model-out", default=None, help="model directory (with --train)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--level", type=float, default=1.0, help="reference isodose as a fraction of d_ref")
    args = ap.parse_args(argv)

    from rtlab.methods import region_model as rm

    shape = args.shape[0] if len(args.shape) == 1 else tuple(args.shape)
    spacing = args.spacing[0] if len(args.spacing) == 1 else tuple(args.spacing)
    split = None if args.split is None else tuple(int(v) if v.is_integer() else v for v in args.split)
    out = rm.generate_dataset(args.out, args.n, seed=args.seed, shape=shape, spacing=spacing,
                              planner=args.planner, split=split, overwrite=args.overwrite)
    print(f"wrote {args.n} cases to {out}")
    if args.train:
        model = rm.train_region_model(out, rm.TrainConfig(epochs=args.epochs, level=args.level))
        if args.model_out:
            model.save(args.model_out)
        test = rm.evaluate_model(model, rm.load_dataset(out, args.level), "test")
        summary = {"record": {k: v for k, v in model.record.items() if k != "epochs"},
                   "test_mean": test.mean(numeric_only=True).round(4).to_dict()}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
