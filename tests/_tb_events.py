"""Reads TensorBoard event files back for tests, without TensorFlow.

An event file is a TFRecord stream: per record a little-endian uint64 length,
its masked CRC-32C, the serialized ``Event`` proto and the data's masked
CRC-32C (the framing tensorboardX's ``RecordWriter`` writes). The protos and
the CRC come from tensorboardX itself; every CRC is checked, so a torn or
corrupt file fails the test instead of reading short.
"""

import glob
import os
import struct

from tensorboardX import record_writer
from tensorboardX.proto import event_pb2

from automix_jax import metrics


def event_files(logdir):
  return sorted(glob.glob(os.path.join(str(logdir), metrics.TB_EVENTS_GLOB)))


def read_events(path):
  """Every ``Event`` of one file, in order."""
  with open(path, "rb") as f:
    data = f.read()
  events, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert crc == record_writer.masked_crc32c(header), f"{path}: header CRC"
    body = data[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert len(body) == length and crc == record_writer.masked_crc32c(body), (
        f"{path}: record CRC at byte {pos}")
    events.append(event_pb2.Event.FromString(body))
    pos += 16 + length
  return events


def _values(logdir, field):
  """``(step, Summary.Value)`` of every value holding ``field``, in order."""
  for path in event_files(logdir):
    for e in read_events(path):
      for v in e.summary.value:
        if v.HasField(field):
          yield e.step, v


def scalars(logdir):
  """``{tag: [(step, value), ...]}`` over every event file of ``logdir``."""
  out = {}
  for step, v in _values(logdir, "simple_value"):
    out.setdefault(v.tag, []).append((step, v.simple_value))
  return out


def images(logdir):
  """``{tag: [(step, height, width, png_bytes), ...]}``."""
  out = {}
  for step, v in _values(logdir, "image"):
    out.setdefault(v.tag, []).append(
        (step, v.image.height, v.image.width, v.image.encoded_image_string))
  return out
