"""A guidance sweep's result (guidance_sweep.json) read back: the chosen call, and the table the model card shows.

Kept apart from the sweep itself (which samples and scores), so that the card and the run's folder read a result
without importing the evaluator.
"""

SWEEP_FILE = "guidance_sweep.json"


def row_interval(row: dict, result: dict) -> list[float]:
    """A row's guidance interval; sweeps written before intervals were swept hold one, the saved call's."""
    return row.get("guidance_interval", result["guidance_interval"])


def row_steps(row: dict, result: dict):
    """A row's respaced steps; sweeps written before steps were swept hold one, the saved call's."""
    return row.get("num_inference_steps", result.get("num_inference_steps"))


def chosen_interval(result: dict) -> list[float]:
    return result.get("chosen_interval", result["guidance_interval"])


def chosen_steps(result: dict):
    return result.get("chosen_steps", result.get("num_inference_steps"))


def swept_several_intervals(result: dict) -> bool:
    return len({tuple(row_interval(row, result)) for row in result["rows"]}) > 1


def swept_several_steps(result: dict) -> bool:
    return len({row_steps(row, result) for row in result["rows"]}) > 1


def sweep_table(result: dict) -> str:
    """The sweep as a Markdown table, the chosen row in bold, for the model card; a steps and an interval column where
    the sweep tried more than one."""
    several, steps = swept_several_intervals(result), swept_several_steps(result)
    head = [*(["steps"] if steps else []), "guidance", *(["interval"] if several else [])]
    head += ["FID", "FID / floor", "clear rate", "digit accuracy"]
    head += ["coverage", "memorization"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        low, high = row_interval(row, result)
        cells = [
            *([f"{row_steps(row, result)}"] if steps else []),
            f"{row['guidance_scale']:g}",
            *([f"[{low:g} T, {high:g} T)"] if several else []),
            f"{row['fid']:.1f}",
            f"{row['fid'] / row['fid_real_floor']:.2f}",
            f"{row['clear_rate']:.3f}",
            f"{row['digit_accuracy']:.3f}",
            f"{row['coverage']:.3f}",
            f"{row['memorization']:.3f}",
        ]
        chosen = (result["chosen"], list(chosen_interval(result)), chosen_steps(result))
        if (row["guidance_scale"], [low, high], row_steps(row, result)) == chosen:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    real = result["rows"][0]
    blanks = ["-"] * (several + steps)
    cells = ["real held-out digits", *blanks, "-", "1", f"{real['real_clear_rate']:.3f}"]
    cells += [f"{real['real_digit_accuracy']:.3f}", "-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
