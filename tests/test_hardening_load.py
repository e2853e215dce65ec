"""Hardening of loading: hostile or broken files and flags give exit 2 and a message that says
what to do; nothing from an untrusted file runs. Real torch saves, real CLI."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.model.load import load_model


class _Evil:
    """Unpickling this creates the marker file: stands in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Evil(marker), buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a .pt2 archive, replacing entries named without the archive's top folder."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name.split("/", 1)[1], zin.read(name)))
    return dst


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pt2")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.export.save(torch.export.export(net, (torch.randn(2, 4),)), folder / "ok.pt2")
    return folder / "ok.pt2"


def _malicious(pt2: Path, folder: Path, where: str, marker: Path) -> Path:
    if where == "sample_inputs":
        return _rewrite(
            pt2, folder / "evil.pt2", {"data/sample_inputs/model.pt": _evil_bytes(marker)}
        )
    with zipfile.ZipFile(pt2) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    return _rewrite(
        pt2,
        folder / "evil.pt2",
        {
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{entry['path_name']}": _evil_bytes(marker),
        },
    )


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
@pytest.mark.parametrize(
    "where, entry",
    [("sample_inputs", "data/sample_inputs/model.pt"), ("weights", "data/weights/weight_0")],
)
def test_pt2_with_code_in_a_pickle_is_refused(pt2, tmp_path, where, entry, suffix):
    marker = tmp_path / "MARKER"
    evil = _malicious(pt2, tmp_path, where, marker)
    evil = evil.rename(evil.with_suffix(suffix))
    result = run_edgekit("optimize", evil, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{entry} (calls io.open)" in result.stderr
    assert "can run any code from the file" in result.stderr
    assert "--trust-pickle" in result.stderr
    assert not marker.exists()
    # The flag is what lets it through: with it, torch unpickles as it always did.
    with pytest.raises(EdgekitError):  # the object is no tensor, but it was unpickled
        load_model(evil, trust_pickle=True)
    assert marker.exists()


def test_a_normal_pt2_still_loads(pt2):
    model = load_model(pt2)
    assert model.format == "exported_program"
    assert model.input_specs[0].shape == (1, 4)


def test_malformed_pt2_says_why_without_torchs_traceback(pt2, tmp_path):
    # A pickle of an empty dict where torch expects a torch.save file: torch logs a traceback
    # and raises "check the warnings above".
    broken = _rewrite(pt2, tmp_path / "broken.pt2", {"data/sample_inputs/model.pt": b"\x80\x02}."})
    result = run_edgekit("optimize", broken, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "warnings above" not in result.stderr
    assert "Invalid magic number" in result.stderr
