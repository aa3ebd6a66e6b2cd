"""2. Cost of the cross-modal stack: CMT against the same towers without cross-modal layers (`num_cross_layers=0`,
the Shallow-Fusion model), as a time ratio next to the FLOP ratio.

If the cross-modal layers ran as efficiently as the towers, the time overhead would equal the FLOP overhead; the
target allows 10 percentage points more. Forward and train step are measured in interleaved rounds (CMT and
towers-only alternate) and the median per-round ratio is reported.

On CPU the measurement runs twice, each in a fresh process: with glibc malloc's adaptive defaults and with the
allocator setting the training scripts apply (`cmt_training.cpu.tune_cpu_allocator`). With the defaults, CMT's larger
working set pushes its ~12 MiB activation buffers out to fresh mmaps that are page-faulted back at every use, which
makes the same elementwise ops several times slower in CMT than in the towers-only model.
"""

from cmt_training.cpu import tune_cpu_allocator
from cmt_training.data import SAMPLING_RATE

from .flops import count_flops
from .isolation import run_isolated
from .models import build_classifier, forward_function, random_batch, train_step_function
from .profiles import top_operators
from .reporting import Result
from .settings import Settings
from .timing import interleaved, median, ratio_per_round


NAME = "cross_modal_cost"
TITLE = "Cost of the cross-modal stack: CMT vs towers-only, time overhead vs FLOP overhead"
SLACK = 0.10
CPU_ALLOCATOR_TUNING = False  # the runner leaves malloc alone: this benchmark measures both settings itself
KINDS = ("forward", "train_step")


def measure(settings: Settings, tune_allocator: bool) -> dict:
    """FLOPs, interleaved round times and train-step profiles of CMT and towers-only (run in a fresh process)."""
    if tune_allocator:
        tune_cpu_allocator()
    runtime = settings.runtime
    batch_size, seconds, tokens = settings.pick((4, 5.0, 24), (2, 1.0, 12), cuda=(32, 5.0, 24))
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
    cmt_profile = top_operators(functions["cmt_train_step"], runtime, limit=None)
    towers_profile = top_operators(functions["towers_train_step"], runtime, limit=None)
    return {
        "shape": f"{batch_size} x {seconds:g} s, {cmt.config.num_cross_layers} cross layers",
        "cross_layers": cmt.config.num_cross_layers,
        "flops": flops,
        "rounds": times,
        "profile_cmt_train_step": cmt_profile,
        "profile_towers_train_step": towers_profile,
        "train_step_extra_time_by_operator": operator_difference(cmt_profile, towers_profile),
    }


def run(settings: Settings) -> Result:
    # (label, tune the allocator, judged against the target): CUDA has its own caching allocator.
    variants = [("", False, True)]
    if settings.device != "cuda":  # (not `settings.runtime`: initialising CUDA here would break the forks below)
        variants = [(" [malloc tuned, training default]", True, True), (" [glibc malloc defaults]", False, False)]
    result = Result(NAME, TITLE)
    details = {}
    for label, tune, judged in variants:
        measured = run_isolated(measure, settings, tune)
        flops, times = measured["flops"], measured["rounds"]
        for kind in KINDS:
            flop_overhead = flops[f"cmt_{kind}"] / flops[f"towers_{kind}"] - 1
            time_overhead = ratio_per_round(times[f"cmt_{kind}"], times[f"towers_{kind}"]) - 1
            name = kind.replace("_", " ")
            result.add(f"{name}: FLOP overhead of the cross stack ({measured['shape']})", 100 * flop_overhead, "%")
            limit = flop_overhead + SLACK
            result.add(
                f"{name}: time overhead of the cross stack{label}",
                100 * time_overhead,
                "%",
                target=f"<= FLOP overhead + {100 * SLACK:.0f} pp ({100 * limit:.1f} %)" if judged else "",
                met=time_overhead <= limit if judged else None,
                note=f"CMT {median(times[f'cmt_{kind}']):.2f} s vs towers {median(times[f'towers_{kind}']):.2f} s",
            )
            measured[f"{kind}_flop_overhead"] = flop_overhead
            measured[f"{kind}_time_overhead"] = time_overhead
        details["malloc_tuned" if tune else "default"] = measured
        extra = ", ".join(
            f"{row['operator']} +{row['extra_ms']:.0f} ms" for row in measured["train_step_extra_time_by_operator"][:6]
        )
        result.notes.append(
            f"Where the cross stack's train-step time goes{label} (profiled CMT minus towers-only): {extra}."
        )
    result.details = details
    return result


def operator_difference(profile: list[dict], reference: list[dict], limit: int = 10) -> list[dict]:
    """Self time per operator of `profile` minus `reference`, largest first."""
    reference_ms = {row["operator"]: row["self_ms"] for row in reference}
    extra = [
        {"operator": row["operator"], "extra_ms": round(row["self_ms"] - reference_ms.get(row["operator"], 0.0), 1)}
        for row in profile
    ]
    return sorted(extra, key=lambda row: row["extra_ms"], reverse=True)[:limit]
