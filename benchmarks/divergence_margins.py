"""How far a healthy run stays from the divergence guard's thresholds (ddpm_pipeline/divergence.py).

    python -m benchmarks.divergence_margins outputs/study/.../logs   # a run's TensorBoard folder

Replays the guard's tests on the logged loss, gradient norm and weight norm of every step and prints the largest
ratio each reached, next to the threshold that would stop the run. Writes benchmarks/results/divergence_margins.json.
"""

import argparse
from pathlib import Path

from benchmarks.common import machine, print_table, write_json
from ddpm_pipeline import divergence


def read_scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")]
    if not events:
        raise SystemExit(f"error: no TensorBoard events under {log_dir}")
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in ("loss", "grad_norm", "weight_norm")}


def worst_ratios(values: list[float]) -> float:
    """The largest value / median of the preceding HISTORY values, once WARMUP values are in."""
    worst = 0.0
    for i in range(divergence.WARMUP, len(values)):
        history = sorted(values[max(0, i - divergence.HISTORY) : i])
        worst = max(worst, values[i] / history[len(history) // 2])
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    scalars = read_scalars(Path(args.log_dir))
    weight = scalars["weight_norm"]
    rows = [
        {"quantity": "loss / recent median", "worst": worst_ratios(scalars["loss"]), "stops_at": divergence.LOSS_JUMP},
        {
            "quantity": "gradient norm / recent median",
            "worst": worst_ratios(scalars["grad_norm"]),
            "stops_at": divergence.GRAD_NORM_JUMP,
        },
        {
            "quantity": "weight norm / previous step",
            "worst": max(b / a for a, b in zip(weight, weight[1:])),
            "stops_at": divergence.WEIGHT_NORM_JUMP,
        },
    ]
    for row in rows:
        row["margin"] = row["stops_at"] / row["worst"]
    print(f"{len(scalars['loss'])} steps of {args.log_dir}\n")
    print_table(rows, ["quantity", "worst", "stops_at", "margin"])
    write_json(f"divergence_margins{args.tag}", {"machine": machine(), "log_dir": args.log_dir, "rows": rows})


if __name__ == "__main__":
    main()
