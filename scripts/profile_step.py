r"""Where the time of one AdAutoMix (or AutoMix) training step goes.

    python scripts/profile_step.py                        # AdAutoMix, CPU proxy
    python scripts/profile_step.py --method automix
    python scripts/profile_step.py --trace /tmp/trace     # + a jax.profiler trace

Builds the method exactly as the CPU reproduction proxy does
(``configs/{adautomix,automix}/cifar10_cpu.py``: CIFAR ResNet-18 at width 1/8,
batch 50, 32x32x3, 10 classes) and times, on the same state, batch and step
key, jitted sub-functions of the step (the methods' own ``prepare``,
``teacher_apply``, ``masks``/``mask``, ``losses`` and ``apply_update``; XLA
removes what a sub-function does not return, so e.g. the gradient of the
classifier loss alone runs only the online passes):

* teacher clean pass: the EMA teacher's train-mode forward on the clean batch
  (mask features and, AdAutoMix, the logits reused for the cosine term);
* generator forward: the detached masks of the classifier's sample + blend;
* ``prepare``: everything outside the gradient (the two rows above, draws,
  label mixing, the linear-mixup sample);
* generator loss, forward + backward: masks, blend, the teacher's pass on the
  generator's sample and back through its activations, CE (+ cosine);
  of which the teacher pass forward + backward to its input alone;
* classifier loss, forward + backward: the online train-mode passes (AdAutoMix
  3: clean, linear mixup, generator mixup; AutoMix 2); and one pass alone;
* both losses in one ``value_and_grad`` (the step's gradient);
* optimizer + EMA update (``apply_update``);
* the full jitted ``train_step``, and the static vanilla and MixUp steps of the
  proxy (``configs/cifar10_cpu.py``) at the same shapes, for comparison.

Each row: median and minimum wall time of ``--reps`` calls after
``--warmup``, in rounds that call every row once (the machine may be shared:
the minimum is the least disturbed figure), the share of the full step, and XLA's own FLOP count of the compiled
function (``cost_analysis``; independent of load). Writes the table and the
command to ``results/profile_<method>_step.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_step  # noqa: E402  (load_config, machine, _median)

BATCH, SIZE, CLASSES, STEPS_PER_EPOCH = 50, 32, 10, 200
CONFIGS = {"adautomix": "configs/adautomix/cifar10_cpu.py",
           "automix": "configs/automix/cifar10_cpu.py",
           "static": "configs/cifar10_cpu.py"}


def _build(path: str, arg: str):
  import jax
  import jax.numpy as jnp
  from automix_jax.train import methods
  config = bench_step.load_config(path, arg)
  config.batch_size = BATCH
  config.model.width = 0.125
  method = methods.get(config.method)(
      config, num_classes=CLASSES, steps_per_epoch=STEPS_PER_EPOCH)
  state = jax.jit(method.init)(jax.random.key(0),
                               jnp.zeros((2, SIZE, SIZE, 3), jnp.float32))
  return method, state


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])


def compile_fn(fn, args) -> tuple[Any, dict]:
  """``(compiled jit(fn), {"compile": s, "flops": XLA's count})``."""
  import jax
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, {"compile": time.perf_counter() - t0,
                    "flops": _flops(compiled)}


def time_interleaved(calls: list, *, reps: int, warmup: int) -> list[dict]:
  """Median / min seconds of each ``(compiled, args)``, called in rounds.

  One round calls every function once, so a change of the machine's load
  (shared cores) affects all rows alike instead of a few.
  """
  import jax
  times = [[] for _ in calls]
  for i in range(warmup + reps):
    for j, (compiled, args) in enumerate(calls):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      if i >= warmup:
        times[j].append(time.perf_counter() - t0)
  return [{"median": bench_step._median(t), "min": min(t)}  # pylint: disable=protected-access
          for t in times]


def parts(name: str, method, state, batch, key) -> list[tuple[str, str, Any]]:
  """``(label, group, (fn, args))`` rows for the learned method ``name``."""
  import jax
  import jax.numpy as jnp
  from automix_jax import generators
  step_key = jax.random.fold_in(key, state.step)
  if name == "adautomix":
    n = method.max_mix
    prepare = functools.partial(method.prepare, n)
  else:
    prepare = method.prepare
  # ctx's Python entries (image size, N) must stay static: they are closed
  # over, the arrays are passed as arguments (constants could be folded).
  static = {"image_hw": (SIZE, SIZE)}
  if name == "adautomix":
    static["n"] = n
  ctx = {k: v for k, v in jax.jit(prepare)(state, batch, step_key).items()
         if k not in static}
  with_static = lambda fn: (lambda *a: fn(*a[:-1], {**a[-1], **static}))
  k_t = jax.random.key(3)
  images = batch["image"]

  def teacher_clean(state, images):
    return method.teacher_apply(state.ema_params, state.ema_batch_stats,
                                images, k_t)

  if name == "adautomix":
    def gen_forward(params, ctx):
      m = method.masks(params["generator"], ctx["features"], ctx["perm_bb"],
                       ctx["lam_bb"], ctx["image_hw"])
      return generators.nway_blend(ctx["images"], m, ctx["perm_bb"].T)
    n_online = 3 if method.max_mix >= 3 else 2
  else:
    def gen_forward(params, ctx):
      s = method.mask(params["generator"], ctx["features"], ctx["perm_bb"],
                      ctx["lam_bb"], ctx["image_hw"])
      return method.mix(ctx["images"], s, ctx["perm_bb"])
    n_online = 2

  def loss_grad(which):
    def fn(params, state, ctx):
      return jax.value_and_grad(
          lambda p: method.losses(p, state, ctx)[which])(params)
    return fn

  def total_grad(params, state, ctx):
    def total(p):
      l_cls, l_gen, aux = method.losses(p, state, ctx)
      return l_cls + l_gen, aux
    return jax.value_and_grad(total, has_aux=True)(params)

  targets = ctx["targets"] if "targets" in ctx else None

  def teacher_to_input(state, x):
    # The generator loss's teacher pass: forward on a mixed sample and back
    # through the teacher's activations to its input (weights frozen).
    def ce(x):
      out, _ = method.teacher_apply(state.ema_params, state.ema_batch_stats,
                                    x, k_t)
      return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(
          out["logits"]["mix"]), -1))
    return jax.value_and_grad(ce)(x)

  def online_pass(params, state, x):
    def ce(p):
      out, _ = method.online_apply(p["classifier"], state.batch_stats, x, k_t)
      return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(
          out["logits"]["one"]), -1))
    return jax.value_and_grad(ce)(params)

  gen_forward = with_static(gen_forward)
  total_grad = with_static(total_grad)
  loss_grad = lambda which, f=loss_grad: with_static(f(which))
  grads = jax.jit(total_grad)(state.params, state, ctx)[1]
  aux = jax.jit(with_static(lambda p, s, c: method.losses(p, s, c)[2]))(
      state.params, state, ctx)

  def update(state, grads, stats, tstats):
    return method.apply_update(state, grads, stats, tstats)

  return [
      ("teacher clean pass (train-mode forward)", "teacher",
       (teacher_clean, (state, images))),
      ("generator forward, classifier sample (masks + blend)", "generator",
       (gen_forward, (state.params, ctx))),
      ("`prepare` (the two rows above + draws, labels, blends)", "exclusive",
       (prepare, (state, batch, step_key))),
      ("generator loss fwd + bwd (masks, blend, teacher pass, CE"
       + (" + cos)" if name == "adautomix" else " + mask loss)"), "",
       (loss_grad(1), (state.params, state, ctx))),
      ("  of which: teacher fwd + bwd to its input, one batch", "teacher",
       (teacher_to_input, (state, images))),
      (f"classifier loss fwd + bwd ({n_online} online passes)", "online",
       (loss_grad(0), (state.params, state, ctx))),
      ("  of which: one online pass fwd + bwd", "",
       (online_pass, (state.params, state, images))),
      ("both losses, one `value_and_grad` (the step's gradient)", "exclusive",
       (total_grad, (state.params, state, ctx))),
      ("optimizer + EMA update (`apply_update`)", "exclusive",
       (update, (state, grads, aux["stats"], aux["teacher_stats"]))),
  ]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method", default="adautomix", choices=("adautomix",
                                                           "automix"))
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--trace", default="",
                 help="also write a jax.profiler trace of 3 full steps here")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out or REPO / "results" /
                     f"profile_{args.method}_step.md")

  import jax
  import numpy as np
  rng = np.random.default_rng(0)
  batch = {"image": jax.numpy.asarray(
      rng.standard_normal((BATCH, SIZE, SIZE, 3)), jax.numpy.float32),
           "label": jax.numpy.asarray(rng.integers(0, CLASSES, BATCH),
                                      jax.numpy.int32)}
  key = jax.random.key(1)
  load0 = os.getloadavg()
  method, state = _build(CONFIGS[args.method], "")
  rows = parts(args.method, method, state, batch, key)
  rows.append(("**full jitted `train_step`**", "full",
               (method.train_step, (state, batch, key))))
  for mixer in ("vanilla", "mixup"):
    static, st = _build(CONFIGS["static"], f"mixer={mixer},ema=True")
    rows.append((f"static {mixer} step (proxy config, EMA on)", "static",
                 (static.train_step, (st, batch, key))))
  compiled = []
  for label, _, (fn, fargs) in rows:
    c, info = compile_fn(fn, fargs)
    compiled.append((c, fargs, info))
    print(f"compiled {label}: {info['compile']:.1f} s, "
          f"{info['flops'] or 0:.3g} flops", flush=True)
  timed = time_interleaved([(c, a) for c, a, _ in compiled], reps=args.reps,
                           warmup=args.warmup)
  results = []
  for (label, group, _), (_, _, info), t in zip(rows, compiled, timed):
    results.append((label, group, {**info, **t}))
    print(f"{label}: median {t['median'] * 1e3:.1f} ms, min "
          f"{t['min'] * 1e3:.1f} ms", flush=True)
  if args.trace:
    step = jax.jit(method.train_step)
    st = state
    jax.block_until_ready(step(st, batch, key))
    with jax.profiler.trace(args.trace):
      for _ in range(3):
        st, m = step(st, batch, key)
      jax.block_until_ready(m)
  load1 = os.getloadavg()

  full = next(r for _, g, r in results if g == "full")
  excl = [r for _, g, r in results if g == "exclusive"]
  static = {lbl.split()[1]: r for lbl, g, r in results if g == "static"}
  command = "python " + " ".join(
      [os.path.relpath(__file__, REPO)] +
      (argv if argv is not None else sys.argv[1:]))

  def ms(x):
    return f"{x * 1e3:.1f}"

  def gflop(r):
    return "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"

  lines = [
      f"# Profile of one {'AdAutoMix' if args.method == 'adautomix' else 'AutoMix'} "
      "training step (CPU proxy shapes)", "",
      f"Command: `{command}`  ",
      f"Machine: {bench_step.machine()}  ",
      f"Load average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/"
      f"{load0[2]:.1f}, at end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}: "
      "other jobs shared the cores, so the times are noisy; the minimum is "
      "the least disturbed figure and the FLOP counts do not depend on load.",
      "",
      f"Shapes: `{CONFIGS[args.method]}` (CIFAR ResNet-18, width 1/8), batch "
      f"{BATCH}, {SIZE}x{SIZE}x3, {CLASSES} classes, float32. Each row is a "
      f"separately jitted function on the same state, batch and key; median "
      f"and min of {args.reps} calls after {args.warmup} warm-up calls, in "
      "rounds that call every row once (load changes hit all rows alike). % = "
      "median / the full step's median. GFLOP: XLA `cost_analysis` of the "
      "compiled function.", "",
      "| part | median (ms) | min (ms) | % of full step | GFLOP |",
      "|---|---|---|---|---|"]
  for label, _, r in results:
    lines.append(
        f"| {label} | {ms(r['median'])} | {ms(r['min'])} | "
        f"{100 * r['median'] / full['median']:.0f} | {gflop(r)} |")
  sum_med = sum(r["median"] for r in excl)
  sum_min = sum(r["min"] for r in excl)
  lines += [
      "",
      f"Sum of the three exclusive parts (`prepare` + the gradient + the "
      f"update): median {ms(sum_med)} ms, min {ms(sum_min)} ms, vs the full "
      f"step's {ms(full['median'])} / {ms(full['min'])} ms (ratio "
      f"{sum_med / full['median']:.2f} / {sum_min / full['min']:.2f}; above "
      "1: one program fuses and overlaps what separate programs cannot).",
      f"Full step vs the static steps (min times): "
      f"{full['min'] / static['vanilla']['min']:.2f}x vanilla, "
      f"{full['min'] / static['mixup']['min']:.2f}x MixUp; FLOPs "
      + (f"{full['flops'] / static['vanilla']['flops']:.2f}x vanilla."
         if full["flops"] and static["vanilla"]["flops"] else "n/a."),
      ""]
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(lines) + "\n")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
