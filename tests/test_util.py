"""gtsrb.util: atomic writes, hashes, the machine description."""

import hashlib

import pytest
import torch

from gtsrb.util import CPU_FLAGS, atomic_path, machine, sha256_file, write_text_atomic


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    write_text_atomic(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]
    assert sha256_file(target) == hashlib.sha256(b"one").hexdigest()


def test_machine_names_the_cpu_flags_that_decide_precision():
    flags = machine()["cpu_flags"]
    assert set(flags) <= set(CPU_FLAGS)
    if torch.cpu._is_avx512_bf16_supported():
        assert "avx512_bf16" in flags
