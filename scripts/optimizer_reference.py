#!/usr/bin/python3
"""Reference values for the optimizers, the learning-rate schedule and the weight EMA, computed by
the code the DeiT III reference trainer (facebookresearch/deit main.py) runs: timm 0.6's Lamb,
CosineLRScheduler (through create_scheduler's arguments) and ModelEma, torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ (what NativeScaler calls for --clip-grad).

Writes under tests/data/optim/:
  optimizer.json  a few optimizer runs over a tiny set of named parameters: the initial values,
                  the gradients of every step (null: the parameter has no gradient that step), the
                  learning rate of every step, and the parameters and moments after every step;
                  plus EMA runs (initial weights, the weights after each step, the EMA after each
                  update).
  schedule.json   CosineLRScheduler values at integer and fractional t for several settings, and
                  the learning rate each epoch actually trains with under main.py's loop (the
                  scheduler is stepped with step(epoch) after the epoch has trained).
tests/test_optimizer.cpp and tests/test_schedule.cpp replay them; the files are committed, so the
tests need no Python. Values are float32 tensors written as exact decimal doubles.

timm is not a Debian package. With Debian's python3-torch (1.13) and python3-torchvision:
    python3 -m venv --system-site-packages /tmp/timm-venv
    /tmp/timm-venv/bin/pip install --no-deps timm==0.6.13
    /tmp/timm-venv/bin/python scripts/optimizer_reference.py
"""
import json
import math
import os

import timm
import torch
from timm.optim import Lamb
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEma

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "optim")

# The tiny "model". weight_decay follows timm's param_groups_weight_decay: no decay for 1-D
# tensors, names ending in ".bias" and model.no_weight_decay() ({pos_embed, cls_token}).
#   zero.weight starts at zero: ||p|| = 0 on the first LAMB step, so the trust ratio is 1.
#   dead.weight starts at zero and never has a nonzero gradient: ||update|| = 0 as well.
#   late.weight has no gradient in step 2: LAMB's step count moves on without it, AdamW's
#   per-parameter step count does not.
PARAMS = [
    ("fc.weight", (6, 4), True, "randn"),
    ("fc.bias", (6,), False, "randn"),
    ("pos_embed", (1, 3, 4), False, "randn"),
    ("ls.gamma", (4,), False, "randn"),
    ("zero.weight", (3, 4), True, "zeros"),
    ("dead.weight", (2, 3), True, "zeros"),
    ("late.weight", (5, 2), True, "randn"),
]

# Per step: the learning rate and the target global gradient norm. Step 1 is clipped by LAMB's
# max_grad_norm (1.0), step 2 is not, step 3 is again.
STEPS = [(4e-3, 3.0), (2.5e-3, 0.5), (1e-3, 1.7)]


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_params(seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for name, shape, _, init in PARAMS:
        if init == "zeros":
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=g) * 0.5
        params.append(torch.nn.Parameter(value))
    return params


def make_grads(seed):
    """Gradients for every step, rescaled to the step's global norm; None where absent."""
    g = torch.Generator().manual_seed(seed + 1000)
    steps = []
    for index, (_, norm) in enumerate(STEPS):
        grads = []
        for name, shape, _, _ in PARAMS:
            if name == "dead.weight":
                grads.append(torch.zeros(shape))
            elif name == "late.weight" and index == 1:
                grads.append(None)
            else:
                grads.append(torch.randn(shape, generator=g))
        total = math.sqrt(sum(float((x.double() ** 2).sum()) for x in grads if x is not None))
        steps.append([None if x is None else (x * (norm / total)).float() for x in grads])
    return steps


def run_optimizer(name, optimizer_name, options, seed):
    params = make_params(seed)
    initial = [p.detach().clone() for p in params]
    decay = [p for p, (_, _, wd, _) in zip(params, PARAMS) if wd]
    no_decay = [p for p, (_, _, wd, _) in zip(params, PARAMS) if not wd]
    wd = options["weight_decay"]
    # create_optimizer_v2: groups only when weight_decay is nonzero, else one group without decay.
    groups = ([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]
              if wd else [{"params": params}])
    betas = (options["beta1"], options["beta2"])
    if optimizer_name == "lamb":
        opt = Lamb(groups, lr=STEPS[0][0], betas=betas, eps=options["eps"], weight_decay=0.0,
                   max_grad_norm=options["max_grad_norm"])
    else:
        opt = torch.optim.AdamW(groups, lr=STEPS[0][0], betas=betas, eps=options["eps"],
                                weight_decay=0.0)
    steps = []
    for (lr, _), grads in zip(STEPS, make_grads(seed)):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        present = [g for g in grads if g is not None]
        grad_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in present))
        if options["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(params, options["clip_grad"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        after = {}
        for (pname, _, _, _), p in zip(PARAMS, params):
            state = opt.state[p]
            entry = {"param": flat(p)}
            if state:
                entry["exp_avg"] = flat(state["exp_avg"])
                entry["exp_avg_sq"] = flat(state["exp_avg_sq"])
            after[pname] = entry
        steps.append({
            "lr": lr,
            "grad_norm": grad_norm,
            "grads": {pname: None if g is None else flat(g)
                      for (pname, _, _, _), g in zip(PARAMS, grads)},
            "after": after,
        })
    return {
        "name": name,
        "optimizer": optimizer_name,
        "options": options,
        "params": [{"name": pname, "shape": list(shape), "weight_decay": wd_flag, "init": flat(v)}
                   for (pname, shape, wd_flag, _), v in zip(PARAMS, initial)],
        "steps": steps,
    }


class TinyModel(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(5, 3, generator=g))
        self.b = torch.nn.Parameter(torch.randn(3, generator=g) * 0.01)


def run_ema(name, decay, seed, updates=4):
    model = TinyModel(seed)
    g = torch.Generator().manual_seed(seed + 7)
    initial = {k: flat(v) for k, v in model.state_dict().items()}
    ema = ModelEma(model, decay=decay)
    steps = []
    for _ in range(updates):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)  # stands in for an optimizer step
        ema.update(model)
        steps.append({
            "weights": {k: flat(v) for k, v in model.state_dict().items()},
            "ema": {k: flat(v) for k, v in ema.ema.state_dict().items()},
        })
    return {
        "name": name,
        "decay": decay,
        "params": [{"name": k, "shape": list(v.shape), "init": initial[k]}
                   for k, v in model.state_dict().items()],
        "steps": steps,
    }


def optimizer_cases():
    base = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "max_grad_norm": 1.0, "clip_grad": 0.0}
    return [
        # The DeiT III pre-training optimizer (RECIPE.md section 2).
        run_optimizer("lamb", "lamb", dict(base, weight_decay=0.05), seed=1),
        # weight_decay 0: no parameter group has decay, so no trust ratio anywhere.
        run_optimizer("lamb_no_decay", "lamb", dict(base, weight_decay=0.0), seed=2),
        # --clip-grad with LAMB: clip_grad_norm_ first, then LAMB's own clip of what is left.
        run_optimizer("lamb_clip_grad", "lamb", dict(base, weight_decay=0.05, clip_grad=0.8),
                      seed=3),
        # Timm's Lamb default eps, to show eps is added to sqrt(v_hat): a visible change at 1e-2.
        run_optimizer("lamb_eps", "lamb", dict(base, weight_decay=0.05, eps=1e-2), seed=4),
        # The fine-tuning optimizer: AdamW (weight decay 0.1), with and without --clip-grad.
        run_optimizer("adamw", "adamw", dict(base, weight_decay=0.1), seed=5),
        run_optimizer("adamw_clip_grad", "adamw", dict(base, weight_decay=0.1, clip_grad=1.0),
                      seed=6),
    ]


def schedule_case(name, epochs, lr, min_lr, warmup_lr, warmup_epochs, cycle_mul=1.0,
                  cycle_decay=0.1, cycle_limit=1, k_decay=1.0, warmup_prefix=False,
                  cooldown_epochs=10):
    """Values of timm's CosineLRScheduler as create_scheduler builds it (plus warmup_prefix, which
    create_scheduler leaves at False), and main.py's per-epoch learning rates."""
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=min_lr, cycle_mul=cycle_mul,
                                  cycle_decay=cycle_decay, cycle_limit=cycle_limit,
                                  warmup_t=warmup_epochs, warmup_lr_init=warmup_lr,
                                  warmup_prefix=warmup_prefix, k_decay=k_decay)
        return opt, sched

    opt, sched = make()
    total = sched.get_cycle_length() + cooldown_epochs
    ts = list(range(total + 1)) + [0.5, warmup_epochs - 0.25, warmup_epochs + 0.5, epochs / 3.0,
                                   epochs - 0.5]
    values = [[t, sched._get_lr(t)[0]] for t in ts if t >= 0]
    # main.py: for epoch in range(start, epochs): train_one_epoch(...); lr_scheduler.step(epoch)
    opt, sched = make()
    epoch_lrs = []
    for epoch in range(epochs):
        epoch_lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    return {
        "name": name,
        "options": {"epochs": epochs, "lr": lr, "min_lr": min_lr, "warmup_lr": warmup_lr,
                    "warmup_epochs": warmup_epochs, "cycle_mul": cycle_mul,
                    "cycle_decay": cycle_decay, "cycle_limit": cycle_limit, "k_decay": k_decay,
                    "warmup_prefix": warmup_prefix},
        "lr_at": values,
        "epoch_lr": epoch_lrs,
    }


def schedule_cases():
    return [
        # DeiT III ViT-S, 800 epochs (RECIPE.md section 2).
        schedule_case("deit3_small_800", 800, 4e-3, 1e-5, 1e-6, 5),
        # ViT-B/L/H, 400 epochs.
        schedule_case("deit3_base_400", 400, 3e-3, 1e-5, 1e-6, 5),
        # Fine-tuning at 224: lr equals min_lr, so after warm-up the cosine is flat.
        schedule_case("finetune_20", 20, 1e-5, 1e-5, 1e-6, 5),
        schedule_case("no_warmup", 12, 1e-3, 1e-6, 1e-6, 0),
        schedule_case("warmup_prefix", 12, 1e-3, 1e-5, 1e-6, 3, warmup_prefix=True),
        schedule_case("cycles", 6, 2e-3, 1e-5, 1e-4, 2, cycle_mul=2.0, cycle_decay=0.5,
                      cycle_limit=3, k_decay=1.5),
        schedule_case("restarts", 5, 1e-3, 0.0, 0.0, 1, cycle_decay=0.5, cycle_limit=2),
    ]


def write(name, payload):
    path = os.path.join(OUT_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.relpath(path))


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    source = {"timm": timm.__version__, "torch": torch.__version__,
              "script": "scripts/optimizer_reference.py"}
    write("optimizer.json", {"source": source, "cases": optimizer_cases(),
                             "ema": [run_ema("ema_deit3", 0.99996, seed=11),
                                     run_ema("ema_fast", 0.9, seed=12)]})
    write("schedule.json", {"source": source, "cases": schedule_cases()})


if __name__ == "__main__":
    main()
