"""``automix-train`` / ``python -m experiments.train``: configs by name or path,
--list_configs, --print_config, one-line errors, early value checks."""

import json
import os
import subprocess
import sys

import pytest

from automix_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def test_configs_by_name_and_by_path():
  names = cli.list_configs()
  assert {"cifar10_cpu", "cifar100_resnet18", "adautomix/cifar10_cpu",
          "automix/cifar100"} <= set(names)
  assert "common" not in names and all(names.values())  # docstring lines
  module, path, arg = cli.resolve_config("cifar10_cpu:mixer=cutmix")
  assert (module, arg) == ("automix_jax.configs.cifar10_cpu", "mixer=cutmix")
  assert os.path.isfile(path)
  for spec in ("adautomix/cifar10_cpu", "configs/adautomix/cifar10_cpu.py",
               "adautomix/cifar10_cpu.py"):
    c = cli.load_config(spec + ":epochs=5")
    assert (c.method, c.num_epochs) == ("adautomix", 5)
  # A file path outside the package (any folder) is loaded as a file.
  c = cli.load_config(os.path.join(ROOT, "configs", "cifar10_cpu.py")
                      + ":mixer=fmix")
  assert c.mixer.name == "fmix" and c.is_locked
  with pytest.raises(cli.ConfigError, match="Did you mean cifar10_cpu"):
    cli.resolve_config("cifar10_cp")
  with pytest.raises(cli.ConfigError, match="unknown config arg 'mixr'"):
    cli.load_config("cifar10_cpu:mixr=cutmix")


def test_unknown_override_names_the_closest_key():
  c = cli.load_config("cifar10_cpu")
  assert cli.unknown_override(c, "num_epochs") is None
  assert cli.unknown_override(c, "mixer.kwargs.alpha") is None
  assert cli.unknown_override(c, "mixer.kwargs.alpah") == (
      "--config.mixer.kwargs.alpah: config.mixer.kwargs has no key 'alpah'; "
      "did you mean --config.mixer.kwargs.alpha?")


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args],
                        cwd=cwd, capture_output=True, text=True, timeout=120)


def test_print_config_and_list_configs():
  out = _cli("--config=configs/cifar10_cpu.py:mixer=cutmix",
             "--config.num_epochs=4", "--config.mixer.kwargs.alpha=0.5",
             "--print_config")
  assert out.returncode == 0, out.stderr
  c = json.loads(out.stdout)
  assert (c["num_epochs"], c["mixer"]["name"], c["mixer"]["kwargs"]["alpha"]) \
      == (4, "cutmix", 0.5)
  out = _cli("--list_configs")
  assert out.returncode == 0 and "adautomix/cifar10_cpu" in out.stdout


def test_bad_value_fails_first_naming_the_key(tmp_path):
  workdir = tmp_path / "run"
  out = _cli("--config", "cifar10_cpu", "--config.mixer.kwargs.alpha=-1",
             f"--workdir={workdir}")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "config.mixer.kwargs.alpha" in lines[0], lines
  assert "Traceback" not in out.stderr
  assert not workdir.exists()  # nothing was set up, loaded or built
  out = _cli("--config", "cifar10_cpu:mixr=1", f"--workdir={workdir}")
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
  assert "unknown config arg 'mixr'" in out.stderr
  out = _cli("--config", "cifar10_cpu", "--config.num_epochs=abc",
             f"--workdir={workdir}")
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "automix-train: flag --config.num_epochs=abc: invalid literal for int() "
      "with base 10: 'abc'"], out.stderr
  out = _cli(f"--workdir={workdir}")
  assert out.returncode == 2 and "--config is required" in out.stderr


def test_every_shipped_config_passes_the_early_check():
  from automix_jax.train import loop
  for name in cli.list_configs():
    loop.check_config(cli.load_config(name), files=False)


def test_a_bad_learned_method_value_names_its_key():
  from automix_jax.train import loop
  c = cli.load_config("adautomix/cifar10_cpu", lock=False)
  c.adautomix.alpha = -1.0
  with pytest.raises(ValueError, match=r"adautomix\.alpha.*> 0"):
    loop.check_config(c, files=False)
  c = cli.load_config("automix/cifar10_cpu", lock=False)
  c.automix.mask_layer = -1
  with pytest.raises(ValueError, match=r"automix\.mask_layer"):
    loop.check_config(c, files=False)
  c = cli.load_config("adautomix/imagenet", lock=False)
  c.data.crop_pct = 1.5
  with pytest.raises(ValueError, match=r"config\.data.*crop_pct"):
    loop.check_config(c, files=False)


def test_readme_training_commands_set_up_the_venv_and_resolve():
  """The README's training block creates ``.venv`` before it uses it, and each
  of its ``--config`` values names a config (by name or path)."""
  import re
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text[text.index("## Training"):]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  lines = [l for l in block.splitlines() if l.strip()]
  first_venv = next(i for i, l in enumerate(lines) if ".venv/bin/" in l)
  assert any("scripts/setup_env.sh" in l for l in lines[:first_venv + 1])
  specs = re.findall(r"--config (\S+)", block)
  assert len(specs) >= 4
  for spec in specs:
    cli.load_config(spec)
