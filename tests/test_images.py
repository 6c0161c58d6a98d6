"""The image benchmarks (pacnet.benchmarks.images): a CelebA folder and Fashion-MNIST files,
their splits and bad files, a fresh target head for every method, and quick runs."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

import pacnet
from pacnet import PacnetError
from pacnet.benchmarks.celeba import CelebA, CelebAConfig, write_celeba
from pacnet.benchmarks.fashion import Fashion, FashionConfig, read_idx
from pacnet.cli import main
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.training.cache import StateCache

NAMES = ["Smiling", "Young", "Bangs", "Male", "Eyeglasses", "Blond_Hair"]


def make_celeba(root, n=40, seed=0):
    """A CelebA-layout folder: n generated 24x20 JPEGs, attribute and partition files."""
    return write_celeba(root, n, seed, NAMES, (24, 20), (0.8, 0.8))


TINY_IMAGES = {
    "image_size": 16,
    "width": 0.0625,
    "stem": "small",
    "source_val": 4,
    "source_steps": 8,
    "source_batch": 8,
    "target_steps": 6,
    "target_batch": 4,
    "workers": 0,
    "target_attributes": ("Smiling", "Bangs"),
}


def test_celeba_source_training_then_pacnet_keeps_the_source_exact(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    bench = CelebA(CelebAConfig(data_dir=str(root), **TINY_IMAGES), StateCache(tmp_path / "c"))
    assert (bench.source_outputs, bench.target_outputs) == (4, 2)
    source = bench.source()
    model = bench.make_model(0)
    loss = bench.loss_fn()
    pacnet.fit(model, loss, source.train, bench.source_fit())
    mask = pacnet.prune(model, 0.8)
    pacnet.allocate(model, mask, source.train, loss, bench.source_fit())
    probe = source.val.x
    model.eval()
    reference = model(probe).detach().clone()
    bn_stats = model.bn1.running_mean.clone()
    target = bench.target(seed=1, size=12)
    tasks, _ = pacnet.calibrate(
        model, mask, target.train, loss, bench.target_fit(), init=bench.target_head(1)
    )
    model.eval()
    assert model(probe).shape == (4, 2)
    assert not torch.equal(model.bn1.running_mean, bn_stats)  # the target's own BN moved
    with tasks.use(model, "source"):
        assert torch.equal(model(probe), reference)
        assert torch.equal(model.bn1.running_mean, bn_stats)
    assert 0.0 <= bench.score(model, target.test) <= 1.0


def test_celeba_too_few_training_images_for_source_val_says_how_many_and_the_flag(tmp_path, capsys):
    root = make_celeba(tmp_path / "celeba", n=12)  # paper split: 6 training images
    settings = {**TINY_IMAGES, "source_val": 200}  # what --quick sets
    message = (
        r"the paper split has 6 training images, source_val=200 needs at least 201 .*"
        r"lower it with --source-val N \(--quick sets 200\)$"
    )
    with pytest.raises(PacnetError, match=message):
        CelebA(CelebAConfig(data_dir=str(root), **settings))
    CelebA(CelebAConfig(data_dir=str(root), **{**settings, "source_val": 5}))  # 5 + 1 fit
    with pytest.raises(PacnetError, match="needs at least 7"):
        CelebA(CelebAConfig(data_dir=str(root), **{**settings, "source_val": 6}))
    common = ["run", "celeba", "--method", "finetune", "--quick", "--data-dir", str(root)]
    common += ["--target-attributes", "Smiling,Bangs"]
    assert main([*common, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 6 training images" in err and "--source-val N" in err


def test_celeba_split_and_paired_targets(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    paper = CelebA(CelebAConfig(data_dir=str(root), **TINY_IMAGES))
    assert len(paper.train_index) == 20 and len(paper.test_index) == 20
    official = CelebA(CelebAConfig(data_dir=str(root), split="official", **TINY_IMAGES))
    assert len(official.train_index) == 32 and len(official.test_index) == 8
    a, b = paper.target(3, 5), paper.target(3, 5)
    assert torch.equal(a.train.x, b.train.x) and a.train.y.shape == (5, 2)
    assert not torch.equal(paper.target(4, 5).train.x, a.train.x)


def test_run_celeba_through_the_cli(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    flags = []
    for key, value in TINY_IMAGES.items():
        flags += [
            f"--{key.replace('_', '-')}",
            ",".join(value) if isinstance(value, tuple) else str(value),
        ]
    code = main(
        [
            "run",
            "celeba",
            "--method",
            "pacnet",
            "--target-size",
            "8",
            "--data-dir",
            str(root),
            "--out",
            str(tmp_path / "out"),
            *flags,
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metric"] == "error" and 0 <= result["target_test"] <= 1


def test_truncated_attribute_file_is_rejected_with_the_file_named(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(
        PacnetError, match=r"list_attr_celeba\.txt: header announces 40 images but 35"
    ):
        CelebA(CelebAConfig(data_dir=str(root), **TINY_IMAGES))
    lines[7] = lines[7].rsplit(" ", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        PacnetError, match=r"list_attr_celeba\.txt, line 8: expected a file name and 6"
    ):
        CelebA(CelebAConfig(data_dir=str(root), **TINY_IMAGES))


def test_missing_celeba_pieces_give_clear_errors(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    with pytest.raises(PacnetError, match="needs --data-dir"):
        CelebAConfig()
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(PacnetError, match=r"list_eval_partition\.txt: file not found"):
        CelebA(CelebAConfig(data_dir=str(root), **TINY_IMAGES))
    with pytest.raises(PacnetError, match="unknown attribute"):
        CelebAConfig(data_dir=str(root), target_attributes=("Smiling",))  # fine as config
        CelebA(
            CelebAConfig(
                data_dir=str(make_celeba(tmp_path / "c2")),
                **{**TINY_IMAGES, "target_attributes": ("Wings",)},
            )
        )


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion(root, n_train=400, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        images[np.arange(n), labels * 2, :] = 255  # a class-dependent stripe
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def test_idx_reader_roundtrip_and_truncation(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(array))
    with gzip.open(tmp_path / "a.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(PacnetError, match="header says 24"):
        read_idx(tmp_path / "b.gz")
    with pytest.raises(PacnetError, match="file not found"):
        read_idx(tmp_path / "missing.gz")


def test_fashion_benchmark_on_generated_idx_files(tmp_path):
    root = make_fashion(tmp_path / "fmnist")
    settings = {
        "data_dir": str(root),
        "source_val": 20,
        "source_steps": 10,
        "target_steps": 5,
        "target_pool": 30,
        "width": 0.0625,
        "source_batch": 16,
        "target_batch": 8,
    }
    bench = Fashion(FashionConfig(**settings))
    task = bench.target(seed=2, size=3)
    assert task.train.x.shape == (15, 1, 16, 16)
    assert sorted(task.train.y.tolist()) == sorted([0, 1, 2, 3, 4] * 3)
    assert len(bench.source().test) == 50
    result = run(
        RunSpec("fashion", "pacnet", seed=0, target_size=3, bench_settings=settings),
        None,
        StateCache(tmp_path / "cache"),
    )
    assert result["source_test_after"] == pytest.approx(result["source_test_after"])
    assert 0 <= result["target_test"] <= 1 and result["metric"] == "error"
    with pytest.raises(PacnetError, match="must not overlap"):
        FashionConfig(data_dir=str(root), target_classes=(4, 5))


@pytest.mark.parametrize(
    "method", ["scratch", "finetune", "linear_probe", "l2sp", "delta", "bss", "lora"]
)
def test_every_method_handles_a_fresh_target_head(method, tmp_path):
    """Target classes differ from the source's: every method trains a new 5-way head and
    what it leaves for the source task still has the source head."""
    root = make_fashion(tmp_path / "fmnist", n_train=200, n_test=50)
    settings = {
        "data_dir": str(root),
        "source_val": 10,
        "source_steps": 4,
        "target_steps": 3,
        "target_pool": 10,
        "width": 0.0625,
        "source_batch": 16,
        "target_batch": 8,
        "image_size": 8,
    }
    result = run(
        RunSpec("fashion", method, seed=0, target_size=2, bench_settings=settings),
        None,
        StateCache(tmp_path / "cache"),
    )
    assert 0 <= result["target_test"] <= 1
    if method in ("scratch", "linear_probe", "lora"):
        assert result["source_test_after"] == result["source_test_before"]


def test_fashion_28_pixels_at_half_width_quick(tmp_path, capsys):
    root = make_fashion(tmp_path / "fmnist", n_train=1400, n_test=100)
    out = tmp_path / "run"
    argv = ["run", "fashion", "--image-size", "28", "--width", "0.5", "--quick"]
    assert main([*argv, "--method", "finetune", "--data-dir", str(root), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["benchmark"]["image_size"] == 28
    assert result["total_params"] > 2_500_000  # ResNet-18 at half width: 2.8 M weights
    assert 0 <= result["target_test"] <= 1
