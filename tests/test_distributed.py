"""torchrun + DDP (gloo, 2 CPU processes) against one process, and the sharding arithmetic."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD, TINY_FLAGS

from pacnet.cli import main
from pacnet.training import distributed

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def pacnet_run(args, out, cache, launcher=()):
    env = {**os.environ, "PACNET_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [*launcher] if launcher else [sys.executable]
    cmd += ["-m", "pacnet", "run", "friedman", "--method", "pacnet", "--quick", *TINY_FLAGS]
    proc = subprocess.run(
        [*cmd, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(Path(out, "result.json").read_text()), proc.stdout


@pytest.mark.parametrize("targets", [[], ["--targets", "1,2"]], ids=["one-target", "two-targets"])
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(targets, tmp_path):
    single, _ = pacnet_run(targets, tmp_path / "one", tmp_path / "cache1")
    ddp, stdout = pacnet_run(targets, tmp_path / "two", tmp_path / "cache2", TORCHRUN)
    assert ddp["distributed"] == {"world_size": 2, "backend": "gloo", "ranks_agree": True}
    assert "distributed" not in single
    assert stdout.count("result.json") == 1  # only rank 0 reports (and writes)
    for key in ("target_test", "source_test_before", "source_test_after"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key
    assert ddp["run_id"] == single["run_id"]  # how it ran is not what it is
    if targets:
        assert ddp["chain"]["earlier_tasks_bit_identical"] is True
        assert ddp["chain"]["owned"] == single["chain"]["owned"]

    # the two processes really trained in parallel: their models differ from the single
    # process's in the last bits (gradients summed in another order), not by a copy
    def final_loss(result):
        return (result.get("fit") or result["chain"]["steps"][-1]["fit"])["final_loss"]

    assert final_loss(ddp) == pytest.approx(final_loss(single), rel=1e-4)
    keys = ("target_test", "source_test_before", "source_test_after")
    assert any(ddp[k] != single[k] for k in keys) or final_loss(ddp) != final_loss(single)


def test_shards_weight_the_mean_loss_to_the_global_mean(monkeypatch):
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.zeros(10, 1)
    world = 3
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    pieces, weighted = [], 0.0
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        (xs, _), share = distributed.shard((x, y))
        mine, _ = distributed.shard({"input_ids": x, "labels": y, "note": "kept"})
        assert torch.equal(mine["input_ids"], xs) and mine["note"] == "kept"  # dict batches
        pieces.append(xs)
        weighted += share * float(xs.square().mean())
    assert torch.equal(torch.cat(pieces), x)  # contiguous, disjoint, complete
    assert [len(p) for p in pieces] == [4, 3, 3]
    assert weighted / world == pytest.approx(float(x.square().mean()))  # DDP's average
    monkeypatch.setattr(distributed, "world_size", lambda: 12)
    with pytest.raises(Exception, match="cannot be split over 12 processes"):
        distributed.shard((x, y))


def test_outside_torchrun_everything_is_one_process():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.mean(2.5) == 2.5 and distributed.ranks_agree("x")
    with distributed.session("cpu") as device:
        assert device == "cpu" and not distributed.active()


def test_only_run_is_distributed(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only 'pacnet run' is distributed" in err


SAMPLER_SCRIPT = """
import torch, pacnet
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from pacnet.training import distributed
seen = []
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
    def forward(self, x):
        seen.extend(x[:, 0].long().tolist())
        return self.linear(x)
with distributed.session("cpu"):
    data = TensorDataset(torch.arange(64.0).unsqueeze(1), torch.zeros(64, 1))
    loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, shuffle=False))
    model = Model()
    pacnet.fit(model, nn.functional.mse_loss, loader, pacnet.FitConfig(steps=4))
    trained = len(set(seen))
    loss = pacnet.evaluate(model, loader, nn.functional.mse_loss)
    with torch.no_grad():
        full = float(nn.functional.mse_loss(model(data.tensors[0]), data.tensors[1]))
    assert abs(loss - full) < 1e-4 * full, (loss, full)
    print(f"[trained on {trained}]", flush=True)
"""


def test_a_distributed_samplers_batches_are_not_split_again(tmp_path):
    script = tmp_path / "sampler.py"
    script.write_text(SAMPLER_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*TORCHRUN, str(script)], capture_output=True, text=True, env=env, timeout=HANG_GUARD
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[trained on 32]") == 2  # 4 batches of 8 per rank, every sample
