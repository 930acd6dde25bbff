r"""Times one training step of each method against the vanilla step (and PyTorch).

    python scripts/bench_step.py                         # CPU-sized + full width
    python scripts/bench_step.py --widths 0.25 --steps 20 --no-torch
    python scripts/bench_step.py --scaling               # 1/2/4/8 fake CPU devices

For every method (vanilla, MixUp, CutMix, CutMix+SUMix, AutoMix, AdAutoMix, SAMix and the
model-aware PuzzleMix, Co-Mixup, ManifoldMix, AlignMix, SnapMix, GuidedMixup; on the CPU
ViT the vanilla and DeiT steps and TransMix, TokenMix, SMMix, MixPro, TL-Align) the
script builds the real training method from its config file (CIFAR-100 ResNet-18
recipe, or configs/vit_cpu.py for the ViT rows: batch 100, 32x32x3, 100 classes) at
each requested width, jits ``train_step`` exactly as the
trainer does (state replicated, batch sharded on the "data" mesh axis,
``donate_argnums=0``), reports compile time separately and the median time of the
timed steps after warm-up, and the ratio to the vanilla step measured in the same
run. The PyTorch peer (scripts/torch_peer.py: vanilla, MixUp, AdAutoMix written from
the algorithm description) is timed on the same machine in the same run.

``--scaling`` runs the sharded MixUp step in subprocesses with 1, 2, 4 and 8 fake
CPU devices on the same global batch, checks that loss and parameters agree with
the 1-device run, and reports the sharding overhead. The table is printed and
written to results/bench_step.md together with the command that produced it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# name -> (config file, arg, peer name in scripts/torch_peer.py or None)
METHODS = {
    "vanilla": ("configs/cifar100_resnet18.py", "mixer=vanilla", "vanilla"),
    "mixup": ("configs/cifar100_resnet18.py", "mixer=mixup", "mixup"),
    "cutmix": ("configs/cifar100_resnet18.py", "mixer=cutmix", None),
    # SUMix (config.label_mix): a second, differentiated clean forward.
    "cutmix+sumix": ("configs/cifar100_resnet18.py",
                     "mixer=cutmix,label_mix=sumix", None),
    # Model-aware: an eval-mode forward + backward for the saliency, then the
    # jitted MRF labelling (and transport) inside the step.
    "puzzlemix": ("configs/cifar100_resnet18.py", "mixer=puzzlemix", None),
    "comixup": ("configs/cifar100_resnet18.py", "mixer=comixup", None),
    "automix": ("configs/automix/cifar100.py", "", None),
    "adautomix": ("configs/adautomix/cifar100.py", "", "adautomix"),
    "samix": ("configs/samix/cifar100.py", "", None),
    # Model-aware (docs/interfaces.md): feature mixing in the one forward;
    # SnapMix adds a clean forward for the CAM.
    "manifoldmix": ("configs/cifar100_resnet18.py", "mixer=manifoldmix", None),
    "alignmix": ("configs/cifar100_resnet18.py", "mixer=alignmix", None),
    "snapmix": ("configs/cifar100_resnet18.py", "mixer=snapmix", None),
    # GuidedMixup: an input-gradient pass (forward + backward) for the saliency.
    "guidedmixup": ("configs/cifar100_resnet18.py", "mixer=guidedmixup", None),
    # Vision-transformer mixers on the CPU ViT (vit_tiny: patch 4, an 8x8
    # token grid at 32 px; width 1 = 64-d), against the vanilla ViT step.
    # TokenMix and SMMix add a clean eval-mode pass for the attention;
    # TransMix, MixPro and TL-Align relabel from the one mixed pass (TL-Align
    # with every block's attention).
    "vit_vanilla": ("configs/vit_cpu.py", "mixer=vanilla", None),
    "vit_deit": ("configs/vit_cpu.py", "mixer=deit", None),
    "transmix": ("configs/vit_cpu.py", "mixer=transmix", None),
    "tokenmix": ("configs/vit_cpu.py", "mixer=tokenmix", None),
    "smmix": ("configs/vit_cpu.py", "mixer=smmix", None),
    "mixpro": ("configs/vit_cpu.py", "mixer=mixpro", None),
    "tlalign": ("configs/vit_cpu.py", "mixer=tlalign", None),
}
# The step each method's ratio is taken against (default "vanilla").
BASELINE = {name: "vit_vanilla" for name in (
    "vit_vanilla", "vit_deit", "transmix", "tokenmix", "smmix", "mixpro",
    "tlalign")}
BATCH, SIZE, CLASSES, STEPS_PER_EPOCH = 100, 32, 100, 500


def load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location("bench_cfg", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  return config


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def time_jax_method(name: str, width: float, steps: int, warmup: int,
                    batch: int = BATCH, return_state: bool = False):
  """(compile_s, median_step_s[, loss, param checksum]) for one method."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from automix_jax import sharding
  from automix_jax.train import methods

  path, arg, _ = METHODS[name]
  config = load_config(path, arg)
  config.model.width = width
  mesh = sharding.make_mesh()
  method = methods.get(config.method)(
      config, num_classes=CLASSES, steps_per_epoch=STEPS_PER_EPOCH, mesh=mesh)
  init_key, train_key = jax.random.split(jax.random.key(0))
  sample = jnp.zeros((2, SIZE, SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(method.init, init_key, sample)
  state_sh = sharding.state_shardings(abstract, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  state = jax.jit(method.init, out_shardings=state_sh)(init_key, sample)
  step = jax.jit(method.train_step, in_shardings=(state_sh, batch_sh, repl),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = [jax.device_put({
      "image": rng.standard_normal((batch, SIZE, SIZE, 3), np.float32),
      "label": rng.integers(0, CLASSES, (batch,)).astype(np.int32)}, batch_sh)
             for _ in range(2)]
  train_key = jax.device_put(train_key, repl)
  t0 = time.perf_counter()
  compiled = step.lower(state, batches[0], train_key).compile()
  compile_s = time.perf_counter() - t0
  times, metrics = [], None
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2], train_key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  if not return_state:
    return compile_s, _median(times)
  params = jax.device_get(state.params)
  checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum()
                       for x in jax.tree.leaves(params)))
  return compile_s, _median(times), float(metrics["loss"]), checksum


def time_torch(peer: str, width: float, steps: int, warmup: int):
  import torch
  import torch_peer
  torch.manual_seed(0)
  step = torch_peer.STEPS[peer](CLASSES, width=width)
  x = torch.randn(BATCH, 3, SIZE, SIZE)
  y = torch.randint(0, CLASSES, (BATCH,))
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    step(x, y)
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return _median(times)


def scaling_child(devices: int, steps: int, width: float) -> None:
  """Runs in a subprocess whose XLA_FLAGS fake ``devices`` CPU devices."""
  import jax
  assert jax.device_count() == devices, jax.devices()
  compile_s, step_s, loss, checksum = time_jax_method(
      "mixup", width, steps, warmup=2, batch=BATCH - BATCH % 8 or 8,
      return_state=True)
  print(json.dumps({"devices": devices, "compile_s": compile_s,
                    "step_s": step_s, "loss": loss, "checksum": checksum}))


def run_scaling(steps: int, width: float) -> list[str]:
  rows, base = [], None
  for n in (1, 2, 4, 8):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={n}")
    out = subprocess.run(
        [sys.executable, __file__, "--scaling-child", str(n), "--steps",
         str(steps), "--widths", str(width)], env=env, check=True,
        capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    base = base or r
    rows.append(
        f"| {n} | {r['step_s'] * 1e3:.1f} | {r['step_s'] / base['step_s']:.2f} |"
        f" {r['compile_s']:.1f} | {r['loss']:.6f} | "
        f"{abs(r['loss'] - base['loss']):.1e} | "
        f"{abs(r['checksum'] - base['checksum']) / base['checksum']:.1e} |")
    print(rows[-1], flush=True)
  return rows


def machine() -> str:
  cpu = "unknown CPU"
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import jax
  dev = jax.devices()[0]
  return (f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores ({cpu}); "
          f"jax {jax.__version__} on {dev.platform} "
          f"({getattr(dev, 'device_kind', dev.platform)})")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--widths", default="0.25,1.0",
                 help="comma-separated width multipliers")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--steps", type=int, default=20, help="timed steps (>= 20)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--scaling", action="store_true")
  p.add_argument("--scaling-child", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--out", default=str(REPO / "results" / "bench_step.md"))
  args = p.parse_args(argv)
  widths = [float(w) for w in args.widths.split(",")]
  if args.scaling_child:
    scaling_child(args.scaling_child, args.steps, widths[0])
    return 0
  names = args.methods.split(",")
  unknown = set(names) - set(METHODS)
  if unknown:
    p.error(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS)}")

  import jax
  import torch
  torch.set_num_threads(os.cpu_count())
  command = "python " + " ".join([os.path.relpath(__file__, REPO)] +
                                 (argv if argv is not None else sys.argv[1:]))
  lines = [
      "# Training-step benchmark", "",
      f"Command: `{command}`  ", f"Date: {datetime.date.today()}  ",
      f"Machine: {machine()}  ",
      f"PyTorch {torch.__version__}, eager, float32, "
      f"{torch.get_num_threads()} intra-op threads; JAX float32 "
      "(XLA CPU, default threading), jit with donated state.", "",
      f"Shape: batch {BATCH}, {SIZE}x{SIZE}x3, {CLASSES} classes, CIFAR "
      "ResNet-18 at the width given (1.0 = the paper's network); the ViT "
      "rows (vit_*, transmix, tokenmix, smmix, mixpro, tlalign) use "
      "configs/vit_cpu.py's vit_tiny (patch 4, 8x8 tokens, 64-d at width 1). "
      f"Median of {args.steps} timed steps after {args.warmup} warm-up steps; "
      "compile time reported separately. Ratio = step time / vanilla JAX step "
      "of the same family (ResNet or ViT) at the same width, measured in this "
      "run.", ""]
  if not args.scaling:
    lines += ["| width | method | JAX compile (s) | JAX step (ms) | ratio to "
              "vanilla | images/s | PyTorch step (ms) | PyTorch / JAX |",
              "|---|---|---|---|---|---|---|---|"]
    for width in widths:
      times = {}
      # A method's baseline is timed first (and gets its own row).
      order = []
      for name in names:
        for n in (BASELINE.get(name, "vanilla"), name):
          if n not in order:
            order.append(n)
      for name in order:
        compile_s, step_s = time_jax_method(name, width, args.steps,
                                            args.warmup)
        times[name] = step_s
        base = times[BASELINE.get(name, "vanilla")]
        peer = METHODS[name][2]
        torch_s = (time_torch(peer, width, args.steps, args.warmup)
                   if peer and not args.no_torch else None)
        row = (f"| {width:g} | {name} | {compile_s:.1f} | {step_s * 1e3:.1f} |"
               f" {step_s / base:.2f} | {BATCH / step_s:.0f} | " +
               (f"{torch_s * 1e3:.1f} | {torch_s / step_s:.2f} |"
                if torch_s else "n/a | n/a |"))
        print(row, flush=True)
        lines.append(row)
  else:
    width = widths[0]
    lines += [f"## Sharded MixUp step, width {width:g}, global batch "
              f"{BATCH - BATCH % 8 or 8}, fake CPU devices", "",
              "All device counts share the host's cores, so this measures the "
              "overhead of partitioning (per-device work, collectives for the "
              "gradient all-reduce), not a speed-up.", "",
              "| devices | step (ms) | ratio to 1 device | compile (s) | loss "
              "after the timed steps | abs loss diff vs 1 device | rel param "
              "checksum diff |", "|---|---|---|---|---|---|---|"]
    lines += run_scaling(args.steps, width)
  text = "\n".join(lines) + "\n"
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if args.scaling and out.exists():
    text = out.read_text() + "\n" + "\n".join(lines[lines.index(
        next(l for l in lines if l.startswith("## Sharded"))):]) + "\n"
  out.write_text(text)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
