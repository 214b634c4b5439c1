"""The PyTorch side of margrad's safetensors export and import, checked both ways.

    python make_fixture.py            # (a) write the PyTorch-made fixture, (b) check margrad's
    python make_fixture.py --check    # (b) only

(a) builds in PyTorch the embedder and cosine head margrad builds by default (Linear, BatchNorm1d,
ReLU, Linear; class centres [C, D]), 64 -> 32 -> 8 with 5 classes, trains it a few seeded steps
with AM-Softmax (CosFace), and saves it with `safetensors.torch.save_file` as
`pytorch-model.safetensors`, and beside it `pytorch-expected.safetensors`: a few inputs and
what PyTorch computes of them (embeddings, normalised embeddings, pair cosines, class cosines).
tests/export.rs loads the model in margrad and compares.

(b) loads `margrad-model.safetensors`, which margrad exported (tests/export.rs writes it with
MARGRAD_BLESS=1, from a fixed seed), with the code of the README's section "Using a trained
model in PyTorch" (the block between the README markers below, copied verbatim: tests/export.rs
checks the copy), and compares PyTorch's embeddings of margrad's raw inputs with the values
margrad computed (`margrad-expected.safetensors`).

Needs torch and safetensors (CPU only).
"""

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent

# README: begin
import json
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

LAYERS = {
    "linear": lambda c: torch.nn.Linear(c["inputs"], c["outputs"], bias=c["bias"]),
    "batch_norm1d": lambda c: torch.nn.BatchNorm1d(
        c["features"], eps=c["eps"], momentum=c["momentum"]
    ),
    "relu": lambda c: torch.nn.ReLU(),
    "leaky_relu": lambda c: torch.nn.LeakyReLU(c["slope"]),
    "tanh": lambda c: torch.nn.Tanh(),
    "sigmoid": lambda c: torch.nn.Sigmoid(),
    "identity": lambda c: torch.nn.Identity(),
    "dropout": lambda c: torch.nn.Dropout(c["p"]),
}


def load_margrad(path):
    """A margrad export: its embedder (in eval mode), its head's weight, its metadata."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    layers = json.loads(meta["margrad.model"])["embedder"]["layers"]
    embedder = torch.nn.Sequential(*(LAYERS[l["kind"]](l["config"]) for l in layers))
    tensors = load_file(path)
    embedder.load_state_dict(
        {k.removeprefix("embed."): v for k, v in tensors.items() if k.startswith("embed.")}
    )
    return embedder.eval(), tensors["head.weight"], meta


def embeddings(embedder, meta, raw):
    """L2-normalised embeddings of raw samples (one per row), scaled as in training."""
    divide_by = json.loads(meta["margrad.input_scaling"])["divide_by"]
    with torch.no_grad():
        return F.normalize(embedder(raw / divide_by), dim=1)
# README: end


class CosineHead(torch.nn.Module):
    """Class centres [C, D] (InsightFace's layout); scores are cosines, no margin."""

    def __init__(self, dim, classes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(classes, dim))
        torch.nn.init.xavier_normal_(self.weight)

    def forward(self, e):
        return F.normalize(e, dim=1) @ F.normalize(self.weight, dim=1).T


class Model(torch.nn.Module):
    """margrad's default MLP embedder with BatchNorm, and a cosine head."""

    def __init__(self, sizes=(64, 32, 8), classes=5):
        super().__init__()
        inputs, hidden, dim = sizes
        self.embed = torch.nn.Sequential(
            torch.nn.Linear(inputs, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, dim),
        )
        self.head = CosineHead(dim, classes)


def am_softmax(cosines, labels, s=30.0, m=0.35):
    """AM-Softmax (CosFace): cross-entropy of s (cos - m [j = y])."""
    margin = F.one_hot(labels, cosines.shape[1]) * m
    return F.cross_entropy(s * (cosines - margin), labels)


def make_pytorch_fixture():
    torch.manual_seed(0)
    model = Model()
    x = torch.rand(40, 64)
    labels = torch.arange(40) % 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        am_softmax(model.head(model.embed(x)), labels).backward()
        optimizer.step()
    model.eval()
    inputs = torch.rand(6, 64)
    with torch.no_grad():
        e = model.embed(inputs)
        normalised = F.normalize(e, dim=1)
        pair_scores = (normalised[0::2] * normalised[1::2]).sum(dim=1)
        class_cosines = model.head(e)
    # a PyTorch user's save: the state_dict as it is (num_batches_tracked included)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        HERE / "pytorch-model.safetensors",
    )
    save_file(
        {
            "inputs": inputs,
            "embeddings": e,
            "normalised": normalised,
            "pair_scores": pair_scores,
            "class_cosines": class_cosines,
        },
        HERE / "pytorch-expected.safetensors",
        metadata={"about": f"pairs (0, 1), (2, 3), (4, 5); torch {torch.__version__}"},
    )
    print(f"wrote pytorch-model.safetensors and pytorch-expected.safetensors (torch {torch.__version__})")


def check_margrad_export():
    embedder, centres, meta = load_margrad(HERE / "margrad-model.safetensors")
    expected = load_file(HERE / "margrad-expected.safetensors")
    e = embeddings(embedder, meta, expected["raw"])
    with torch.no_grad():
        pair_scores = (e[0::2] * e[1::2]).sum(dim=1)
        class_cosines = e @ F.normalize(centres, dim=1).T
    worst = 0.0
    for name, ours in [
        ("normalised", e),
        ("pair_scores", pair_scores),
        ("class_cosines", class_cosines),
    ]:
        diff = (ours - expected[name]).abs().max().item()
        worst = max(worst, diff)
        print(f"margrad export in PyTorch: {name:<14} max |PyTorch - margrad| = {diff:.2e}")
    assert worst < 1e-6, f"PyTorch's values of margrad's export differ by {worst:.2e}"
    print(f"margrad export checked in PyTorch {torch.__version__}: agree to {worst:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check margrad's export")
    args = parser.parse_args()
    if not args.check:
        make_pytorch_fixture()
    check_margrad_export()


if __name__ == "__main__":
    sys.exit(main())
