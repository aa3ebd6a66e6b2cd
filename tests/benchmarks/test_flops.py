"""The FLOP counter's corrections in benchmarks/flops.py: grouped-convolution backward and CPU flash attention."""

import torch
from torch.utils.flop_counter import sdpa_flop_count

from benchmarks.flops import attention_flops, count_flops


def test_grouped_convolution_backward_counts_each_gradient_as_the_forward():
    conv = torch.nn.Conv1d(16, 16, kernel_size=5, padding=2, groups=4)
    inputs = torch.randn(2, 16, 30, requires_grad=True)
    forward, _ = count_flops(lambda: conv(inputs))
    both_gradients, by_operator = count_flops(lambda: conv(inputs).sum().backward())
    assert forward == 2 * 2 * 16 * 30 * (16 // 4) * 5  # batch, output channels, frames, inputs per group, taps
    assert both_gradients == 3 * forward  # torch alone counts the weight gradient `groups` times: 6x
    assert by_operator["convolution_backward"] == 2 * forward

    inputs.requires_grad_(False)
    weight_gradient_only, _ = count_flops(lambda: conv(inputs).sum().backward())
    assert weight_gradient_only == 2 * forward


def test_cpu_flash_attention_is_counted():
    query, key, value = (torch.randn(2, 4, 32, 16, requires_grad=True) for _ in range(3))
    total, by_operator = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(query, key, value))
    assert "_scaled_dot_product_flash_attention_for_cpu" in by_operator
    assert total == attention_flops(by_operator) == sdpa_flop_count(query.shape, key.shape, value.shape)

    total, by_operator = count_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(query, key, value).sum().backward()
    )
    assert by_operator["_scaled_dot_product_flash_attention_for_cpu_backward"] > 0
    assert total == attention_flops(by_operator)
