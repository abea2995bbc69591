"""A manifest records the command that made its file, quoted so it can be pasted back."""

from __future__ import annotations

import shlex
import sys

from edgekit.artifacts import Manifest, read_manifest, write_manifest


def test_the_recorded_command_keeps_an_argument_with_spaces_whole(tmp_path, monkeypatch):
    argv = ["/opt/venv/bin/edgekit", "export", "my models/best.pt", "--note", "two words", "--out", "a'b.onnx"]
    monkeypatch.setattr(sys, "argv", argv)
    artifact = tmp_path / "file.bin"
    artifact.write_bytes(b"\x00" * 8)
    write_manifest(artifact, Manifest(kind="export", format="onnx", precision="fp32"))
    assert shlex.split(read_manifest(artifact)["command"]) == ["edgekit", *argv[1:]]
