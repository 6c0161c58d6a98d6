"""The catalogue of bad input: every case ends with one line naming the problem (exit 2 on
the command line, :class:`PacnetError` in Python), never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import mlp, small_cnn
from safetensors.torch import load_file, save_file
from test_images import make_celeba
from torch import nn
from torch.nn import functional as F

import pacnet
from pacnet import Data, FitConfig, PacnetError, fit, prune
from pacnet.cli import main

TINY = [
    "--source-samples",
    "400",
    "--source-steps",
    "20",
    "--target-steps",
    "10",
    "--target-test",
    "100",
    "--hidden",
    "8,8",
    "--target-pool",
    "60",
    "--quick",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    model = small_cnn()
    mask = pacnet.prune(model, 0.8)
    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    good = root / "good.safetensors"
    pacnet.save(good, model, tasks)
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-200])
    flipped = root / "flipped.safetensors"
    data = bytearray(good.read_bytes())
    data[-5] ^= 0x55
    flipped.write_bytes(bytes(data))
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    future = root / "future.safetensors"
    save_file(load_file(str(good)), future, metadata={**meta, "format_version": "7"})
    celeba = make_celeba(root / "celeba", n=12)
    attr = celeba / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[5] = (
        lines[5].replace("-1", "0", 1) if "-1" in lines[5] else lines[5].replace(" 1", " 2", 1)
    )
    attr.write_text("\n".join(lines) + "\n")
    bad_toml = root / "bad.toml"
    bad_toml.write_text("methods = [\n")
    unknown_key = root / "unknown.toml"
    unknown_key.write_text("method = ['pacnet']\n")
    blocker = root / "blocker"
    blocker.write_text("a file, not a folder")
    return {
        "good": good,
        "truncated": truncated,
        "flipped": flipped,
        "future": future,
        "celeba": celeba,
        "bad_toml": bad_toml,
        "unknown_key": unknown_key,
        "blocker": blocker,
        "root": root,
    }


CLI = [
    (
        "unknown benchmark",
        ["run", "imagenet", "--method", "pacnet"],
        "unknown benchmark 'imagenet'",
    ),
    ("unknown method", ["run", "friedman", "--method", "magic", *TINY], "unknown method 'magic'"),
    (
        "ratio above 1",
        ["run", "friedman", "--method", "pacnet", "--ratio", "1.5", *TINY],
        "ratio must lie strictly between 0 and 1",
    ),
    (
        "ratio 0",
        ["run", "friedman", "--method", "pacnet", "--ratio", "0", *TINY],
        "ratio must lie strictly between 0 and 1",
    ),
    (
        "negative lambda",
        ["run", "friedman", "--method", "pacnet", "--lam", "-0.1", *TINY],
        "lam (λ) must be >= 0",
    ),
    (
        "target size 0",
        ["run", "friedman", "--method", "finetune", "--target-size", "0", *TINY],
        "target size must be >= 1",
    ),
    (
        "target size above the pool",
        ["run", "friedman", "--method", "finetune", "--target-size", "61", *TINY],
        "exceeds the pool",
    ),
    (
        "negative seed",
        ["run", "friedman", "--method", "finetune", "--seed", "-3", *TINY],
        "seed must lie in",
    ),
    (
        "unknown hyperparameter",
        ["reproduce", "friedman", "--param", "l2sp.gamma=1", *TINY],
        "l2sp has no hyperparameter 'gamma'",
    ),
    (
        "malformed setting",
        ["run", "friedman", "--method", "pacnet", "--hidden", "8,x"],
        "argument --hidden",
    ),
    (
        "unknown flag",
        ["run", "friedman", "--method", "pacnet", "--ration", "0.5"],
        "unrecognized arguments: --ration",
    ),
    (
        "unknown select mode",
        ["run", "friedman", "--method", "pacnet", "--select", "all"],
        "argument --select: invalid choice",
    ),
    (
        "missing Fashion-MNIST",
        ["run", "fashion", "--method", "pacnet", "--data-dir", "/nonexistent/fmnist"],
        "Fashion-MNIST folder not found",
    ),
    (
        "CelebA without --data-dir",
        ["run", "celeba", "--method", "pacnet"],
        "CelebA needs --data-dir",
    ),
]


@pytest.mark.parametrize(("case", "argv", "message"), CLI, ids=[c[0] for c in CLI])
def test_command_line_catalogue(case, argv, message, tmp_path, capsys):
    code = main([*argv, "--out", str(tmp_path / "out")] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert code == 2, case
    assert err.startswith("pacnet: error: ") and err.count("\n") == 1, err
    assert message in err


FILE_CASES = [
    (
        "truncated checkpoint",
        lambda f: ["inspect", str(f["truncated"])],
        "not a readable safetensors",
    ),
    ("corrupted checkpoint", lambda f: ["inspect", str(f["flipped"])], "checksum mismatch"),
    (
        "future checkpoint version",
        lambda f: ["inspect", str(f["future"])],
        "format version 7 is newer",
    ),
    (
        "missing checkpoint",
        lambda f: ["inspect", str(f["root"] / "none.safetensors")],
        "file not found",
    ),
    (
        "malformed CelebA attributes",
        lambda f: [
            "run",
            "celeba",
            "--method",
            "pacnet",
            "--data-dir",
            str(f["celeba"]),
            "--out",
            str(f["root"] / "o"),
        ],
        "list_attr_celeba.txt, line 6: attribute values must be 1 or -1",
    ),
    (
        "bad config file",
        lambda f: ["reproduce", "friedman", "--config", str(f["bad_toml"])],
        "not valid TOML",
    ),
    (
        "config with an unknown key",
        lambda f: ["reproduce", "friedman", "--config", str(f["unknown_key"])],
        "unknown keys ['method']",
    ),
    (
        "unwritable output folder",
        lambda f: [
            "run",
            "friedman",
            "--method",
            "scratch",
            *TINY,
            "--out",
            str(f["blocker"] / "sub"),
        ],
        "cannot create the output folder",
    ),
]


@pytest.mark.parametrize(("case", "argv", "message"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_file_catalogue(case, argv, message, files, capsys):
    code = main(argv(files))
    err = capsys.readouterr().err
    assert code == 2, case
    assert err.startswith("pacnet: error: ") and err.count("\n") == 1, err
    assert message in err


def test_a_good_checkpoint_inspects(files, capsys):
    assert main(["inspect", str(files["good"])]) == 0
    assert "checksum ok; tasks source, target" in capsys.readouterr().out


API = [
    (
        "mask shape mismatch",
        lambda: pacnet.prune(mlp(), 0.5).check(
            nn.Sequential(
                nn.Linear(5, 17), nn.ReLU(), nn.Linear(17, 16), nn.ReLU(), nn.Linear(16, 1)
            )
        ),
        "has shape",
    ),
    (
        "mask name mismatch",
        lambda: pacnet.prune(mlp(), 0.5).check(nn.Sequential(nn.Linear(5, 16))),
        "is not a parameter of the model",
    ),
    ("NaN in data", lambda: Data(torch.tensor([[float("nan")]]), torch.zeros(1, 1)), "NaN or inf"),
    ("empty data set", lambda: Data(torch.zeros(0, 3), torch.zeros(0, 1)), "empty data set"),
    (
        "negative lambda in calibrate",
        lambda: pacnet.calibrate(
            mlp(),
            pacnet.prune(mlp(), 0.5),
            Data(torch.zeros(2, 5), torch.zeros(2, 1)),
            nn.functional.mse_loss,
            FitConfig(steps=1),
            lam=-1,
        ),
        "lam (λ) must be >= 0",
    ),
    ("ratio outside (0, 1) in prune", lambda: pacnet.prune(mlp(), 1.0), "ratio must lie strictly"),
    (
        "empty prunable set",
        lambda: pacnet.prune(nn.Sequential(nn.Linear(3, 1)), 0.5),
        "no prunable parameters",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), API, ids=[c[0] for c in API])
def test_python_catalogue(case, call, message):
    with pytest.raises(PacnetError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_from_another_architecture(files):
    with pytest.raises(PacnetError, match="does not match the model's architecture"):
        pacnet.load(files["good"], mlp())


def test_debug_flag_shows_the_traceback():
    base = [sys.executable, "-m", "pacnet", "run", "friedman", "--method", "pacnet", "--ratio", "2"]
    quiet = subprocess.run(base, capture_output=True, text=True)
    loud = subprocess.run([*base, "--debug"], capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "PacnetError" in loud.stderr


def _regressor(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: pacnet.prune("model", 0.8),
        lambda m, d: pacnet.fit("model", F.mse_loss, d, FitConfig(steps=1)),
        lambda m, d: pacnet.evaluate({"weight": torch.ones(1)}, d, F.mse_loss),
        lambda m, d: pacnet.allocate(None, pacnet.prune(m, 0.5), d, F.mse_loss, FitConfig()),
    ],
)
def test_something_other_than_a_module_is_refused_in_one_line(call):
    model = _regressor()
    data = Data(torch.randn(8, 5), torch.randn(8, 1))
    with pytest.raises(PacnetError, match=r"must be a torch.nn.Module, got") as info:
        call(model, data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, k, d: pacnet.allocate(m, dict(k), d, F.mse_loss, FitConfig()), "mask must be"),
        (lambda m, k, d: pacnet.allocate(m, k, d, F.mse_loss, None), "cfg must be"),
        (lambda m, k, d: pacnet.calibrate(m, k, d, F.mse_loss, FitConfig(), tasks="x"), "tasks"),
        (lambda m, k, d: pacnet.Tasks(m, None), "mask must be"),
        (lambda m, k, d: pacnet.train_only(m, k, "adam").__enter__(), "optimizer must be"),
        (lambda m, k, d: pacnet.save("/tmp/never.safetensors", m, k), "tasks must be"),
        (lambda m, k, d: fit(m, lambda o, y: 1 / 0, d, FitConfig(steps=1)), "ZeroDivisionError"),
        (lambda m, k, d: fit(m, lambda o, y: torch.tensor(1.0), d, FitConfig()), "no gradient"),
        (lambda m, k, d: fit(m, F.mse_loss, d, FitConfig(), seed=None), "seed must be"),
        (lambda m, k, d: fit(m, F.mse_loss, d, FitConfig(), seed=2**70), "seed must be"),
        (lambda m, k, d: pacnet.load(Path(__file__).parent, m), "is a directory"),
    ],
)
def test_arguments_of_the_wrong_kind_are_one_line(call, message):
    model = _regressor()
    mask = prune(model, 0.5)
    data = Data(torch.randn(8, 5), torch.randn(8, 1))
    with pytest.raises(PacnetError, match=message) as info:
        call(model, mask, data)
    assert "\n" not in str(info.value)
