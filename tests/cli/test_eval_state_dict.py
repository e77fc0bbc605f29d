"""`pocketnas eval` on a bare state dict, as the PocketNet authors' code saves it."""

from __future__ import annotations

import json

import torch

from pocketnas.cli import main


def _authors_style_state_dict(published, name: str) -> dict[str, torch.Tensor]:
    """A state dict with exactly the reference keys and shapes, filled with plausible values."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in published["presets"][name]["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def test_eval_accepts_authors_state_dict(tmp_path, published, mxnet_rec_dir, capsys):
    checkpoint = tmp_path / "171798backbone.pth"
    torch.save(_authors_style_state_dict(published, "pocketnet-s128"), checkpoint)
    bin_path = mxnet_rec_dir / "tiny_pairs.bin"
    args = ["eval", "--checkpoint", str(checkpoint), "--bin", str(bin_path), "--json"]
    assert main([*args, "--preset", "pocketnet-s128"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sets"]["tiny_pairs"]["pairs"] == 40


def test_eval_state_dict_needs_matching_preset(tmp_path, published, mxnet_rec_dir, capsys):
    checkpoint = tmp_path / "backbone.pth"
    torch.save(_authors_style_state_dict(published, "pocketnet-s128"), checkpoint)
    bin_path = str(mxnet_rec_dir / "tiny_pairs.bin")
    assert main(["eval", "--checkpoint", str(checkpoint), "--bin", bin_path]) == 2
    assert "--preset" in capsys.readouterr().err
    args = ["eval", "--checkpoint", str(checkpoint), "--bin", bin_path]
    assert main([*args, "--preset", "pocketnet-m128"]) == 2
    err = capsys.readouterr().err
    assert str(checkpoint) in err
    assert "does not fit" in err
