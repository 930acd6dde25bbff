"""The installed wheel: ``automix-train`` from outside the repository, the
configs shipped by name, no packaging warnings, a mixers-only core install."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A wheel built from the working tree, installed (``--no-deps``) in a fresh
  venv that reuses this interpreter's site-packages for the dependencies."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(os.path.join(ROOT, "automix_jax"), src / "automix_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
       "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
       str(src)], capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
  wheel, = (tmp / "dist").glob("automix_jax-*.whl")
  env_dir = tmp / "venv"
  venv.create(env_dir, with_pip=False)
  py = env_dir / "bin" / "python"
  purelib = subprocess.run(
      [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip()
  # Dependencies from this interpreter's site-packages, after the venv's own
  # (a plain path line: that folder's own .pth hooks, e.g. an editable
  # install of this repository, are not run).
  with open(os.path.join(purelib, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  install = subprocess.run(
      [sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
       "--no-deps", "--no-index", str(wheel)],
      capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stdout + install.stderr
  return {"bin": env_dir / "bin", "build_log": build.stdout + build.stderr,
          "cwd": tmp}


def _run(installed, *args):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([str(installed["bin"] / "automix-train"), *args],
                        cwd=installed["cwd"], env=env, capture_output=True,
                        text=True, timeout=120)


def test_build_has_no_packaging_warnings(installed):
  log = installed["build_log"]
  assert "deprecated" not in log.lower(), [
      l for l in log.splitlines() if "deprecated" in l.lower()]


def test_installed_entry_point_lists_and_prints_configs(installed):
  out = _run(installed, "--list_configs")
  assert out.returncode == 0, out.stderr
  names = [line.split()[0] for line in out.stdout.splitlines()]
  assert {"cifar10_cpu", "adautomix/cifar10_cpu",
          "automix/cifar10_cpu"} <= set(names)
  assert "common" not in names
  out = _run(installed, "--config", "cifar10_cpu:mixer=cutmix",
             "--config.num_epochs=7", "--print_config")
  assert out.returncode == 0, out.stderr
  import json
  config = json.loads(out.stdout)
  assert config["mixer"]["name"] == "cutmix" and config["num_epochs"] == 7
  out = _run(installed, "--config=adautomix/cifar10_cpu", "--print_config")
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout)["method"] == "adautomix"
  # The package came from the venv, not from this checkout.
  where = subprocess.run(
      [str(installed["bin"] / "python"), "-c",
       "import automix_jax; print(automix_jax.__file__)"],
      cwd=installed["cwd"], capture_output=True, text=True, check=True)
  assert where.stdout.startswith(str(installed["cwd"] / "venv")), where.stdout


def test_mixers_need_only_jax_and_numpy():
  """``import automix_jax.mixers`` and a mix, with every trainer dependency
  made unimportable (the core install has jax and numpy only)."""
  code = textwrap.dedent("""
      import sys
      BLOCK = ("flax", "optax", "orbax", "tensorflow_datasets", "tensorflow",
               "ml_collections", "absl", "etils", "chex", "PIL", "tqdm",
               "matplotlib", "torch", "tensorboardX")
      class Block:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in BLOCK:
            raise ImportError(f"blocked: {name}")
      sys.meta_path.insert(0, Block())
      import jax, jax.numpy as jnp
      import automix_jax
      from automix_jax import mixers
      x = jnp.ones((4, 8, 8, 3)); y = jnp.arange(4) % 2
      out = mixers.get("cutmix", alpha=1.0)(jax.random.key(0), x,
                                            jax.nn.one_hot(y, 2))
      print("ok", type(out).__name__)
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("ok")


def test_core_install_requires_only_jax_and_numpy():
  import configparser
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  core = [l.split(">")[0].split("=")[0].strip() for l in
          cfg["options"]["install_requires"].split("\n") if l.strip()]
  assert sorted(core) == ["jax", "numpy"]
  train = cfg["options.extras_require"]["train"]
  for dep in ("flax", "optax", "orbax-checkpoint", "ml-collections",
              "tensorboardX"):
    assert dep in train
  setup_env = open(os.path.join(ROOT, "scripts", "setup_env.sh")).read()
  assert ".[train,test,peer]" in setup_env
