import numpy as np
import pytest

import llmcodec
from llmcodec import dtypes

ALL_DTYPES = [d.numpy for d in dtypes.BY_ID.values()]


def assert_same_tensors(got: dict, want: dict) -> None:
    """Same names in the same order, and each tensor the same dtype, shape and bytes."""
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


@pytest.fixture
def roundtrip(tmp_path):
    counter = iter(range(10**9))

    def run(tensors, metadata=None, **kwargs):
        path = tmp_path / f"t{next(counter)}.llmc"
        llmcodec.save_file(tensors, path, metadata, **kwargs)
        got = llmcodec.load_file(path)
        assert_same_tensors(got, {k: np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<"))
                                  if v.dtype.byteorder == ">" else v for k, v in tensors.items()})
        return path

    return run


@pytest.fixture
def full_disk(monkeypatch):
    """Every write to a file opened with os.fdopen (llmcodec's output files) fails with ENOSPC."""
    import errno
    import os

    fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.file = fdopen(fd, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(os, "fdopen", FullDisk)


def legacy_transform_file(path, parts: dict, record: str) -> None:
    """A version 1.1 file of arrays whose transform record is the metadata entry
    `llmcodec.transforms` (spec 10.2): written by save_file, then its Minor_Version set to 1."""
    import struct

    from llmcodec import format as fmt, transforms

    llmcodec.save_file(parts, path, {transforms.METADATA_KEY: record})
    data = bytearray(path.read_bytes())
    data[10:12] = struct.pack("<H", 1)
    data[36:40] = struct.pack("<I", fmt.checksum32(bytes(data[:36])))
    path.write_bytes(bytes(data))
