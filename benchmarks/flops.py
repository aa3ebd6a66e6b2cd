"""FLOP counting with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention; elementwise
work, normalisation and the optimizer count zero), with two corrections registered when this module is imported:

- torch's counter knows the CUDA attention kernels but not the CPU flash-attention kernel that sdpa dispatches to on
  CPU, so without a formula attention FLOPs would silently be missing from CPU counts;
- torch's `convolution_backward` formula counts a grouped convolution's weight gradient as if it were ungrouped.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    flop_registry,
    get_shape,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)


ATTENTION_OPERATORS = ("attention", "bmm", "baddbmm")


def _register_cpu_attention_flops():
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

    if forward is not None and forward not in flop_registry:

        @register_flop_formula(forward)
        def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None and backward not in flop_registry:

        @register_flop_formula(backward)
        def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _register_grouped_conv_backward_flops():
    """torch's `convolution_backward` formula counts the weight gradient of a grouped convolution as if it were
    ungrouped (`groups` times too many FLOPs: 16x for HuBERT's positional convolution, which inflated a base-size
    train step's count by ~13 %). The weight gradient does exactly the forward's multiplications, so it is counted
    as the forward; the input gradient is torch's (correct) transposed-convolution count."""
    aten = torch.ops.aten
    flop_registry.pop(aten.convolution_backward, None)

    @register_flop_formula(aten.convolution_backward)
    def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:  # fmt: skip
        flops = 0
        if output_mask[0]:
            flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
        if output_mask[1]:
            flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
        return flops


_register_cpu_attention_flops()
_register_grouped_conv_backward_flops()


def count_flops(function: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of `function` (matmuls, convolutions, attention) and the count per operator."""
    with FlopCounterMode(display=False) as counter:
        function()
    by_operator = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_operator


def attention_flops(by_operator: dict[str, int]) -> int:
    """FLOPs of the attention products (sdpa kernels, or the batched matmuls of eager attention)."""
    return sum(n for op, n in by_operator.items() if any(key in op for key in ATTENTION_OPERATORS))
