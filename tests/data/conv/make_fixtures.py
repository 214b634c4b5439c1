"""Writes torch.json beside this script: PyTorch's values and gradients for a few convolution,
pooling, batch-norm and PReLU cases, which tests/conv.rs compares margrad's with.

Run with PyTorch 2.x (CPU): `python tests/data/conv/make_fixtures.py`. Everything is float64;
the gradients are those of sum(y * seed) for a random seed of y's shape.
"""

import json
import os

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)


def tensor(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1)]}


cases = []


def record(op, args, inputs, fn):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    seed = torch.randn(y.shape)
    (y * seed).sum().backward()
    cases.append(
        {
            "op": op,
            "args": args,
            "inputs": [tensor(t) for t in inputs],
            "output": tensor(y),
            "seed": tensor(seed),
            "grads": [tensor(t.grad) for t in leaves],
        }
    )


def conv2d(n, c, h, w, o, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    args = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    inputs = [torch.randn(n, c, h, w), torch.randn(o, c // groups, k, k)]
    if bias:
        inputs.append(torch.randn(o))
    record(
        "conv2d",
        args,
        inputs,
        lambda x, wt, *b: F.conv2d(x, wt, b[0] if b else None, stride, padding, dilation, groups),
    )


conv2d(2, 3, 7, 6, 4, 3, padding=1)
conv2d(1, 2, 9, 8, 3, 5, stride=2, padding=2)
conv2d(2, 4, 6, 6, 4, 3, padding=1, groups=4, bias=False)
conv2d(1, 2, 9, 9, 2, 3, stride=2, padding=1, dilation=2)
conv2d(1, 1, 8, 8, 2, 7, padding=0)

args = {"stride": 2, "padding": 1, "dilation": 1, "groups": 1}
record("conv1d", args, [torch.randn(2, 3, 11), torch.randn(4, 3, 3), torch.randn(4)],
       lambda x, wt, b: F.conv1d(x, wt, b, 2, 1, 1, 1))

for kernel, stride, padding in [(2, 2, 0), (3, 2, 1)]:
    args = {"kernel": kernel, "stride": stride, "padding": padding}
    record("max_pool2d", args, [torch.randn(2, 3, 7, 6)],
           lambda x: F.max_pool2d(x, kernel, stride, padding))
    record("avg_pool2d", args, [torch.randn(2, 3, 7, 6)],
           lambda x: F.avg_pool2d(x, kernel, stride, padding))  # count_include_pad=True

record("batch_norm2d", {}, [torch.randn(3, 4, 5, 5), torch.randn(4), torch.randn(4)],
       lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5))
record("prelu", {}, [torch.randn(2, 3, 4, 4), torch.rand(3)], lambda x, a: F.prelu(x, a))
record("prelu", {}, [torch.randn(2, 3, 4, 4), torch.rand(1)], lambda x, a: F.prelu(x, a))

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch.json")
with open(path, "w") as f:
    json.dump(cases, f)
print(f"{len(cases)} cases written to {path}")
