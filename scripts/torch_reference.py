#!/usr/bin/python3
"""Reference logits, loss and gradients of a tiny DeiT III ViT, computed by PyTorch.

The model is written here in plain PyTorch (timm is not a Debian package) and mirrors timm's
VisionTransformer as timm builds deit3_* models: a patch convolution with bias, a learned position
embedding WITHOUT a class-token slot that is added to the patch tokens before the class token is
concatenated in front, pre-norm blocks with LayerScale (ls1.gamma, ls2.gamma), LayerNorm eps 1e-6,
qkv with bias, exact (erf) GELU, a final norm, and the head on the class token. Parameter names are
timm's, so the same names serve our checkpoints and exports.

The weights are deterministic but not the training initialisation: LayerScale gammas at 1e-4 would
make every block nearly the identity and hide errors in them, so gammas, norms, biases and
embeddings are all random and of order one. The computation runs in float64 from weights and
inputs that are exactly representable in float32, so the C++ test (fp32) sees the same numbers.

Writes tests/data/parity/tiny_vit.safetensors (a few hundred KB; committed, so the test needs no
Python) holding:
    config in __metadata__["config"] (JSON: patch, dim, depth, heads, num_classes, input_size)
    input.images (3, 3, 16, 16) F32, input.targets (3, 10) F32 soft targets
    param.<timm name> F32          every parameter
    expected.logits (3, 10) F64, expected.loss (1,) F64
    grad.<timm name> F64           d loss / d parameter
The safetensors writer below is our own few lines (the safetensors package is not a Debian
package); it follows the reference implementation's layout, which also checks our reader
against a file it did not write.

Run with Debian's python3-torch:
    /usr/bin/python3 scripts/torch_reference.py [--out FILE]
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = {"patch": 4, "dim": 32, "depth": 2, "heads": 4, "num_classes": 10, "input_size": 16}
BATCH = 3
SEED = 20220407
OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                   "data", "parity", "tiny_vit.safetensors"))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-4):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x):  # drop-path is the identity here (rate 0)
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class VisionTransformer(nn.Module):
    def __init__(self, patch, dim, depth, heads, num_classes, input_size):
        super().__init__()
        num_patches = (input_size // patch) ** 2
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))  # no class-token slot
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images):
        x = self.patch_embed(images) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def random_parameters(model, gen):
    """Order-one values for every parameter, rounded to float32."""
    params = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if name.endswith("gamma"):
            value = 0.5 * noise  # random sign and size: each block's branches matter
        elif name.startswith("norm") or ".norm" in name:
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * noise
        elif name.endswith("bias"):
            value = 0.1 * noise
        elif p.dim() >= 2 and name not in ("cls_token", "pos_embed"):
            value = noise / math.sqrt(p[0].numel())  # fan-in scaling keeps activations of order one
        else:
            value = 0.5 * noise  # cls_token, pos_embed
        params[name] = value.float()
    return params


def write_safetensors(path, tensors, metadata):
    """The reference layout: F64 before F32, then by name; header padded with spaces to 8 bytes."""
    codes = {torch.float32: "F32", torch.float64: "F64"}
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in order:
        t = tensors[name].contiguous()
        blob = t.numpy().tobytes()  # native order: little-endian, checked in main()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    assert sys.byteorder == "little", "safetensors data is little-endian"

    gen = torch.Generator().manual_seed(SEED)
    model = VisionTransformer(**CONFIG)
    params = random_parameters(model, gen)
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])

    size = CONFIG["input_size"]
    images = torch.randn(BATCH, 3, size, size, generator=gen).float()
    # Soft targets as mixup makes them, plus exact 0 / 1 entries as binarised targets have.
    targets = torch.rand(BATCH, CONFIG["num_classes"], generator=gen).float()
    targets[0] = (targets[0] > 0.5).float()

    logits = model(images.double())
    loss = F.binary_cross_entropy_with_logits(logits, targets.double())  # mean over B x classes
    loss.backward()

    tensors = {"input.images": images, "input.targets": targets,
               "expected.logits": logits.detach(), "expected.loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        tensors["param." + name] = params[name]
        tensors["grad." + name] = p.grad.detach()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    metadata = {"config": json.dumps(CONFIG), "generator": "scripts/torch_reference.py",
                "torch": torch.__version__}
    write_safetensors(args.out, tensors, metadata)
    print(f"wrote {args.out}: loss {loss.item():.6f}, {len(tensors)} tensors, "
          f"{os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
