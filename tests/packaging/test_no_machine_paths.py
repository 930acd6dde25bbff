"""Tracked text files name no absolute path of a machine and cite no internal
notes by section number (cite the paper, the public repository and file, or
the project's docs)."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# Built from pieces so that this file does not match itself.
_DIRS = "|".join(("work", "home", "Users", "root", "mnt", "scratch", "data",
                  "opt", "srv", "nfs", "private"))
ABSOLUTE = re.compile(r"(?:^|[^\w.~$/-])(/(?:" + _DIRS + r")/[\w.-]+)")
WINDOWS = re.compile(r"\b[A-Z]:\\" + r"(?:Users|work)\\")
NOTES = re.compile(r"(?<!\w)(?:adautomix|mixers)\.md\b|shared/" + "reference|"
                   r"reference (?:doc|survey)\b|\u00a7\s*\d")


def _tracked_text_files():
  names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode().split("\0")
  for name in filter(None, names):
    path = os.path.join(ROOT, name)
    if os.path.islink(path) or not os.path.isfile(path):
      continue
    with open(path, "rb") as f:
      raw = f.read()
    if b"\0" in raw[:8192]:
      continue  # binary
    try:
      yield name, raw.decode("utf-8")
    except UnicodeDecodeError:
      continue  # binary (compressed data, images)


def _hits(pattern):
  out = []
  for name, text in _tracked_text_files():
    for i, line in enumerate(text.splitlines(), 1):
      m = pattern.search(line)
      if m:
        out.append(f"{name}:{i}: {m.group(0).strip()}")
  return out


def test_no_absolute_machine_paths_in_tracked_text_files():
  hits = _hits(ABSOLUTE) + _hits(WINDOWS)
  assert not hits, "absolute machine paths:\n" + "\n".join(hits[:20])


def test_no_internal_notes_cited_by_section():
  hits = _hits(NOTES)
  assert not hits, "citations of internal notes:\n" + "\n".join(hits[:20])


def test_the_patterns_catch_what_they_should():
  assert ABSOLUTE.search('"workdir": "/' + 'work/main/runs/x"')
  assert ABSOLUTE.search("see /" + "home/alice/data.tar.gz")
  assert not ABSOLUTE.search("../shared/data/cifar10-jpeg.tar.gz")
  assert not ABSOLUTE.search("https://example.org/home/x")
  assert NOTES.search("(reference" + " doc \u00a77.3)")
