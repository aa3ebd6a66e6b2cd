"""2. Cost of the cross-modal stack: CMT against the same towers without cross-modal layers (`num_cross_layers=0`,
the Shallow-Fusion model), as a time ratio next to the FLOP ratio.

If the cross-modal layers ran as efficiently as the towers, the time overhead would equal the FLOP overhead; the
target allows 10 percentage points more. Forward and train step are measured in interleaved rounds (CMT and
towers-only alternate) and the median per-round ratio is reported.
"""

from .common import (
    SAMPLING_RATE,
    Result,
    Settings,
    build_classifier,
    count_flops,
    forward_function,
    interleaved,
    median,
    random_batch,
    ratio_per_round,
    top_operators,
    train_step_function,
)


NAME = "cross_modal_cost"
TITLE = "Cost of the cross-modal stack: CMT vs towers-only, time overhead vs FLOP overhead"
SLACK = 0.10


def run(settings: Settings) -> Result:
    runtime = settings.runtime
    batch_size, seconds, tokens = settings.pick((4, 5.0, 24), (2, 1.0, 12))
    cmt = build_classifier(settings.preset, runtime)
    towers = build_classifier(settings.preset, runtime, num_cross_layers=0)
    batch = runtime.to_device(random_batch(cmt.config, [int(seconds * SAMPLING_RATE)] * batch_size, tokens))
    functions = {
        "cmt_forward": forward_function(cmt, batch, runtime),
        "towers_forward": forward_function(towers, batch, runtime),
        "cmt_train_step": train_step_function(cmt, batch, runtime),
        "towers_train_step": train_step_function(towers, batch, runtime),
    }
    flops = {name: count_flops(function)[0] for name, function in functions.items()}
    # A ratio of two noisy ~10 s steps: more rounds than the other benchmarks.
    times = interleaved(functions, runtime, rounds=settings.pick(max(5, settings.repeats), 1), warmup=0)

    result = Result(NAME, TITLE)
    shape = f"{batch_size} x {seconds:g} s, {cmt.config.num_cross_layers} cross layers"
    details = {"flops": flops, "rounds": times, "cross_layers": cmt.config.num_cross_layers}
    for kind in ("forward", "train_step"):
        flop_overhead = flops[f"cmt_{kind}"] / flops[f"towers_{kind}"] - 1
        time_overhead = ratio_per_round(times[f"cmt_{kind}"], times[f"towers_{kind}"]) - 1
        label = kind.replace("_", " ")
        result.add(f"{label}: FLOP overhead of the cross stack ({shape})", 100 * flop_overhead, "%")
        result.add(
            f"{label}: time overhead of the cross stack",
            100 * time_overhead,
            "%",
            target=f"<= FLOP overhead + {100 * SLACK:.0f} pp ({100 * (flop_overhead + SLACK):.1f} %)",
            met=time_overhead <= flop_overhead + SLACK,
            note=f"CMT {median(times[f'cmt_{kind}']):.2f} s vs towers {median(times[f'towers_{kind}']):.2f} s",
        )
        details[f"{kind}_flop_overhead"] = flop_overhead
        details[f"{kind}_time_overhead"] = time_overhead
    details["profile_cmt_train_step"] = top_operators(functions["cmt_train_step"], runtime, limit=None)
    details["profile_towers_train_step"] = top_operators(functions["towers_train_step"], runtime, limit=None)
    details["train_step_extra_time_by_operator"] = operator_difference(
        details["profile_cmt_train_step"], details["profile_towers_train_step"]
    )
    result.details = details
    extra = ", ".join(
        f"{row['operator']} +{row['extra_ms']:.0f} ms" for row in details["train_step_extra_time_by_operator"][:6]
    )
    result.notes.append(f"Where the cross stack's train-step time goes (profiled CMT minus towers-only): {extra}.")
    return result


def operator_difference(profile: list[dict], reference: list[dict], limit: int = 10) -> list[dict]:
    """Self time per operator of `profile` minus `reference`, largest first."""
    reference_ms = {row["operator"]: row["self_ms"] for row in reference}
    extra = [
        {"operator": row["operator"], "extra_ms": round(row["self_ms"] - reference_ms.get(row["operator"], 0.0), 1)}
        for row in profile
    ]
    return sorted(extra, key=lambda row: row["extra_ms"], reverse=True)[:limit]
