r"""The training command line: ``automix-train`` (= ``python -m experiments.train``).

  automix-train --config cifar10_cpu:mixer=cutmix --workdir runs/x \
    --config.num_epochs=3
  automix-train --config configs/adautomix/cifar10_cpu.py --workdir runs/y
  automix-train --list_configs
  automix-train --config adautomix/cifar10_cpu --print_config

``--config`` is ``NAME[:ARG]`` or ``PATH.py[:ARG]``: a shipped config by name
(``automix_jax/configs/<NAME>.py``, see ``--list_configs``) or any config file
by path; ``ARG`` goes to its ``get_config(arg)``. The config is locked: an
override of a key that does not exist (a typo) stops with one line that names
the closest key, and a value that cannot run (``--config.mixer.kwargs.alpha=-1``)
stops before any data is loaded, naming the config key. ``--print_config``
prints the resolved config (after overrides) as JSON and exits; a run writes
the same JSON to ``<workdir>/config.json``. A workdir with a checkpoint is
resumed. Multi-process launches (TPU pod slices, SLURM / Open MPI, or the
explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables
that scripts/launch_local_pod.sh sets) initialise ``jax.distributed`` first
(``automix_jax.multihost``); see docs/training.md.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections.config_flags import config_flags

from automix_jax import configs as configs_lib

PROG = "automix-train"
CONFIG_DIR = os.path.dirname(os.path.abspath(configs_lib.__file__))
_HELPER_MODULES = ("common",)


# ---------------------------------------------------------------------------
# Configs by name or path.
# ---------------------------------------------------------------------------


class ConfigError(ValueError):
  """A ``--config`` value or override that cannot be used (one-line message)."""


def list_configs() -> dict[str, str]:
  """``{name: first docstring line}`` of every shipped config, sorted."""
  out = {}
  for folder, dirs, files in os.walk(CONFIG_DIR):
    dirs[:] = sorted(d for d in dirs if not d.startswith("_"))
    for f in sorted(files):
      if not f.endswith(".py") or f.startswith("_"):
        continue
      rel = os.path.relpath(os.path.join(folder, f), CONFIG_DIR)[:-3]
      name = rel.replace(os.sep, "/")
      if name in _HELPER_MODULES:
        continue
      with open(os.path.join(folder, f), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
      if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config"
                 for n in tree.body):
        continue
      doc = (ast.get_docstring(tree) or "").strip().splitlines()
      out[name] = doc[0] if doc else ""
  return dict(sorted(out.items()))


def resolve_config(spec: str) -> tuple[str, str, str | None]:
  """``NAME[:ARG]`` or ``PATH.py[:ARG]`` -> ``(module or "", path, arg)``.

  A path that exists is used as it is; otherwise the text (less a leading
  ``configs/`` and a trailing ``.py``) names a shipped config, returned with
  its module name so that it is imported, not executed a second time.

  Raises:
    ConfigError: neither a file nor a shipped config, with the closest names.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError("--config: expected NAME[:ARG] or PATH.py[:ARG] "
                      f"(see --list_configs); got {spec!r}.")
  target, colon, arg = spec.partition(":")
  arg = arg if colon else None
  if os.path.isfile(target):
    return "", target, arg
  name = target.replace(os.sep, "/")
  name = name[len("configs/"):] if name.startswith("configs/") else name
  name = name[:-3] if name.endswith(".py") else name
  known = list_configs()
  if name in known:
    module = "automix_jax.configs." + name.replace("/", ".")
    return module, os.path.join(CONFIG_DIR, *name.split("/")) + ".py", arg
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f" Did you mean {' or '.join(close)}?" if close else ""
  raise ConfigError(
      f"--config: {target!r} is neither a config file nor a shipped config "
      f"name.{hint} Expected NAME[:ARG] (one of {', '.join(known)}) or "
      "PATH.py[:ARG].")


def load_config(spec: str, lock: bool = True):
  """The ConfigDict of ``NAME[:ARG]`` / ``PATH.py[:ARG]`` (``get_config(arg)``).

  Raises:
    ConfigError: unknown config, or ``get_config`` refused ``ARG`` (its
      message, on one line).
  """
  module_name, path, arg = resolve_config(spec)
  if module_name:
    module = importlib.import_module(module_name)
  else:
    loader_spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {path!r} has no get_config(arg) function.")
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except (ValueError, TypeError) as e:
    raise ConfigError(f"--config {spec}: {e}") from None
  if lock and hasattr(config, "lock"):
    config.lock()
  return config


class _ConfigParser(flags.ArgumentParser):
  """``--config`` by name or path (ml_collections' parser takes paths only)."""

  def parse(self, argument):
    return load_config(argument)

  def flag_type(self):
    return "config object"


def _define_config_flag(name: str, help_string: str):
  """``DEFINE_config_file`` with a parser that also takes names; the overrides
  (``--config.a.b=v``) are ml_collections' own."""
  flag = config_flags._ConfigFlag(  # pylint: disable=protected-access
      parser=_ConfigParser(),
      serializer=flags.ArgumentSerializer(), name=name, default=None,
      help_string=help_string, flag_values=flags.FLAGS)
  return flags.DEFINE_flag(flag, flags.FLAGS)


_CONFIG = _define_config_flag(
    "config", "NAME[:ARG] (see --list_configs) or PATH.py[:ARG]; ARG goes to "
    "get_config(arg). Override keys with --config.<key>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output/resume directory.")
_PRINT = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (after overrides) as "
    "JSON and exit.")
_LIST = flags.DEFINE_bool("list_configs", False,
                          "List the shipped config names and exit.")
_MULTI = flags.DEFINE_enum(
    "multi_process", "auto", ["auto", "true", "false"],
    "Initialise jax.distributed: auto = when the environment shows a "
    "multi-process launch (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + "
    "JAX_PROCESS_ID, SLURM, Open MPI, a TPU pod slice); see docs/training.md.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300,
    "Seconds a process waits for all processes to connect before it aborts.")


# ---------------------------------------------------------------------------
# One-line errors for the command line.
# ---------------------------------------------------------------------------


def _argv_value(argv, name):
  """The last ``--name=v`` / ``--name v`` value in ``argv`` (None if absent)."""
  value = None
  for i, a in enumerate(argv):
    if re.fullmatch(rf"--?{name}", a) and i + 1 < len(argv):
      value = argv[i + 1]
    elif re.match(rf"--?{name}=", a):
      value = a.split("=", 1)[1]
  return value


def unknown_override(config, key: str) -> str | None:
  """Why ``--config.<key>`` names no config entry, with the closest key; None
  if it does."""
  node, done = config, []
  for part in key.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join(["config", *done])
      close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
      hint = (f"; did you mean --{where}.{close[0]}?" if close else
              f"; {where} has {', '.join(sorted(map(str, keys))) or 'no keys'}.")
      return f"--config.{key}: {where} has no key {part!r}{hint}"
    node, done = node[part], [*done, part]
  return None


def _flag_error_line(e: Exception, argv) -> str:
  """One line for an exception raised while parsing the command line."""
  spec = _argv_value(argv, "config")
  if isinstance(e, AttributeError) and spec:
    try:
      config = load_config(spec, lock=False)
    except Exception:  # pylint: disable=broad-except
      config = None
    if config is not None:
      for a in argv:
        m = re.match(r"--?(?:no)?config\.([\w.]+)", a)
        line = m and unknown_override(config, m.group(1))
        if line:
          return line
  if isinstance(e.__context__, ConfigError):
    return str(e.__context__)  # absl wraps the --config parser's own error
  text = str(e).replace("\\n", " ").replace("\\'", "'")
  return " ".join(text.split()) or type(e).__name__


def parse_flags(argv):
  """absl flag parsing whose errors are one line on stderr (exit status 2)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f"{PROG}: {_flag_error_line(e, argv)}", file=sys.stderr)
    sys.exit(2)


def _fail(message: str) -> None:
  """One line on stderr, exit status 2 (a usage error)."""
  print(f"{PROG}: {message}", file=sys.stderr)
  sys.exit(2)


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings still show."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  """Lists, prints, or checks and trains ``--config`` in ``--workdir``."""
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags are --name=value.")
  if _LIST.value:
    for name, doc in list_configs().items():
      print(f"{name:28s} {doc}")
    return
  if _CONFIG.value is None:
    _fail("--config is required (NAME[:ARG] or PATH.py[:ARG]; see "
          "--list_configs).")
  config = _CONFIG.value
  if _PRINT.value:
    print(configs_lib.to_json(config))
    return
  if not _WORKDIR.value:
    _fail("--workdir is required (the output and resume directory).")
  from automix_jax.train import loop  # pylint: disable=import-outside-toplevel
  try:
    loop.check_config(config, files=False)  # before any device or data work
  except (ValueError, FileNotFoundError) as e:
    _fail(f"bad config: {e}")
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  import jax  # pylint: disable=import-outside-toplevel
  from automix_jax import multihost  # pylint: disable=import-outside-toplevel
  try:
    multihost.initialize(_MULTI.value, timeout_s=_INIT_TIMEOUT.value)
  except multihost.LaunchError as e:
    sys.exit(f"{PROG}: bad multi-process launch: {e}")
  # First line of every process: who it is and what it sees.
  print(multihost.process_line(), file=sys.stderr, flush=True)
  summary = loop.train_and_evaluate(config, _WORKDIR.value)
  if jax.process_index() == 0:
    short = {k: v for k, v in summary.items()
             if k not in ("history", "config")}
    print(json.dumps(short, indent=1, default=str))


def run():
  """The ``automix-train`` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
