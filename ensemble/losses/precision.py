"""Losses run in float32 even inside an autocast region.

Under bf16/fp16 autocast, `F.linear` and matmuls return low precision while elementwise maths
on float inputs stays float32; mixing them breaks in-place ops (`scatter`) and loses the margin's
precision. Loss heads therefore compute on float32 inputs with autocast switched off.
"""

from __future__ import annotations

import functools

import torch


def float32_loss(fn):
    """Decorator: call `fn` with autocast disabled on every tensor's device type, tensors cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        device_type = tensors[0].device.type if tensors else "cpu"
        cast = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        cast_kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        with torch.autocast(device_type, enabled=False):
            return fn(*cast, **cast_kw)

    return wrapper
