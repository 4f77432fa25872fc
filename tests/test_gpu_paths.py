"""The GPU paths of training, scoring and extraction (issue 13, defects 1-9).

Each defect is reproduced on the CPU with a stand-in (a fake CUDA runtime that checks its
arguments as torch does, CPU bf16 autocast in place of GPU AMP, the TF32 settings, which a
CPU build of torch keeps too). The tests marked ``gpu`` run the real thing and skip without
CUDA (``pytest -m gpu`` on a GPU node).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clifvqa._device import DeviceError, float32_math
from clifvqa.train import distributed, trainer
from clifvqa.train.config import DataConfig, OptimConfig, RunConfig, set_options, tiny
from clifvqa.train.distributed import Dist, setup_dist
from clifvqa.train.model import TINY_FRAGMENTS, build_model, tiny_config
from clifvqa.train.trainer import amp_dtype

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TAGS = ["train"] * 4 + ["val"] * 3 + ["test"] * 3


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA runtime with two GPUs; ``set_device`` checks its argument as torch does and records
    the index, and joining a process group is recorded instead of done."""
    calls: dict[str, list] = {"set_device": [], "init": []}

    def set_device(device) -> None:
        from torch.cuda._utils import _get_device_index

        calls["set_device"].append(_get_device_index(device))  # ValueError for torch.device("cuda")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda kind: calls["init"].append(kind))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


# ---------------------------------------------------------------- 1, 9: which GPU a process uses


@pytest.mark.parametrize("asked, index", [("auto", 0), ("cuda", 0), ("cuda:1", 1)])
def test_single_gpu_training_gets_an_indexed_device(fake_cuda, asked, index):
    dist, device, started = setup_dist(asked)
    assert device == torch.device("cuda", index) and fake_cuda["set_device"] == [index]
    assert not dist.enabled and not started and fake_cuda["init"] == []


def test_torchrun_takes_the_gpu_of_local_rank_and_refuses_an_explicit_index(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist, device, started = setup_dist("cuda")
    assert (dist.rank, dist.world, device, started) == (1, 2, torch.device("cuda", 1), True)
    assert fake_cuda == {"set_device": [1], "init": ["nccl"]}
    with pytest.raises(DeviceError, match=r"--device cuda:0 under torchrun \(WORLD_SIZE=2\) would put every "
                                          r"process on GPU 0: pass --device cuda or auto") as err:
        setup_dist("cuda:0")
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert fake_cuda["init"] == ["nccl"]  # refused before joining the group


# ---------------------------------------------------------------- 3: bf16 only where native


def test_amp_dtype_counts_native_bf16_only(monkeypatch):
    gpu = torch.device("cuda", 0)
    pre_ampere = lambda including_emulation=True: including_emulation  # noqa: E731 (emulated only)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", pre_ampere)
    assert amp_dtype(OptimConfig(), gpu) == torch.float16  # and so the GradScaler is on
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(OptimConfig(), gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # an older torch's signature
    assert amp_dtype(OptimConfig(), gpu) == torch.float16
    assert amp_dtype(OptimConfig(amp=False), gpu) is None
    assert amp_dtype(OptimConfig(), torch.device("cpu")) is None


# ---------------------------------------------------------------- 2: float32 semantic branch and head


def _close_rows(n: int, r: int = 4, t: int = 16) -> torch.Tensor:
    """``n`` videos' semantic rows that differ by less than bfloat16 resolves (as real ones do)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 2 * r, t, generator=g)
    return base + 1e-4 * torch.arange(n).view(n, 1, 1) * torch.rand(1, 2 * r, t, generator=g)


@pytest.mark.parametrize("head", [True, False])
def test_semantic_scores_under_bf16_autocast_are_the_float32_ones(head):
    torch.manual_seed(0)
    model = build_model(tiny_config(4, branches="semantic", regression_head=head)).eval()
    rows = _close_rows(48)
    with torch.no_grad():
        full = model(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(rows)
    assert full.unique().numel() == 48
    assert amp.dtype == torch.float32 and amp.unique().numel() == 48  # bf16: ties
    torch.testing.assert_close(amp, full, rtol=0, atol=1e-7)


def test_readouts_under_bf16_autocast_are_float32():
    torch.manual_seed(0)
    config = tiny_config(4, fragments=replace(TINY_FRAGMENTS, num_clips_test=2).to_dict())
    model = build_model(config).eval()
    rows, clips = _close_rows(3), torch.randn(3, 2, 3, *config.clip_shape)
    features = model.fastvqa.fragments_backbone(clips[:, 0]).detach()
    f_v = torch.randn(3, model.head.fc3.in_features)
    with torch.no_grad():
        want = (model.semantic(rows), model.fastvqa.vqa_head(features), model.head(f_v), model(rows, clips))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = (model.semantic(rows), model.fastvqa.vqa_head(features.bfloat16()),
                   model.head(f_v.bfloat16()), model(rows, clips))
    assert all(g.dtype == torch.float32 for g in got)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(got[1], want[1], rtol=0.02, atol=0.02)  # only its input was rounded
    torch.testing.assert_close(got[3], want[3], rtol=0.05, atol=0.05)  # the backbone runs in bf16


def test_validation_under_amp_equals_evaluate_of_the_checkpoint(tmp_path, make_train_set, monkeypatch):
    """CPU bf16 autocast stands in for GPU AMP: training steps run in it, validation and test
    must not, so result.json and `clifvqa evaluate` of best/ agree to the last bit."""
    from clifvqa.train.evaluate import evaluate

    seen = []
    real_step = trainer.train_step

    def step(*args, dtype, **kwargs):
        seen.append(dtype)
        return real_step(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(trainer, "amp_dtype", lambda config, device: torch.bfloat16 if config.amp else None)
    monkeypatch.setattr(trainer, "train_step", step)
    data = make_train_set(tmp_path / "data", n=len(TAGS), split=TAGS)
    config = set_options(tiny(RunConfig()), epochs=1, batch_size=2, workers=0, num_clips_test=2, warmup_epochs=0,
                         device="cpu", manifest=data.manifest, videos=data.videos, stores=[data.store])
    trainer.run_training(config, tmp_path / "run", progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    for split in ("val", "test"):
        ev = evaluate(tmp_path / "run" / "best", data.manifest, data.videos, [data.store], split=split,
                      plot=False)
        assert ev.metrics["n"] == result[split]["n"] and ev.metrics["srocc"] == result[split]["srocc"]
        # the trainer correlates with the loader's float32 copies of the MOS, evaluate with the manifest's
        assert ev.metrics["plcc"] == pytest.approx(result[split]["plcc"], abs=1e-6)
    lines = (tmp_path / "run" / "test_predictions.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    assert [float(row[2]) for row in rows] == ev.predictions  # the same float32 outputs, to the last bit


# ---------------------------------------------------------------- 7: no TF32 when scoring


def _tf32_settings() -> tuple:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, matmul.fp32_precision)


def test_float32_math_turns_tf32_off_inside_and_restores_it():
    before = _tf32_settings()
    assert before[0] == "tf32"  # torch's default for cuDNN convolutions
    with float32_math():
        assert _tf32_settings() == ("ieee", "ieee", "ieee")
    assert _tf32_settings() == before
    with pytest.raises(RuntimeError), float32_math():
        raise RuntimeError("scoring failed")
    assert _tf32_settings() == before


def test_predict_and_evaluation_score_without_tf32(tmp_path, make_train_set, monkeypatch):
    from clifvqa import predict as predict_module
    from clifvqa.features.store import open_store
    from clifvqa.train.checkpoint import load_checkpoint, save_checkpoint
    from clifvqa.train.data import VideoItem, load_semantic_features
    from clifvqa.train.inference import predict_items

    data = make_train_set(tmp_path / "data", n=2)
    with open_store(data.store) as st:
        prov, fp = st.provenance, st.fingerprint
    config = tiny_config(4, prov["prompts"]["groups"], branches="semantic")
    torch.manual_seed(0)
    model = build_model(config)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, config, prov, fp)
    during: list[tuple] = []  # the settings while the model runs

    def record(module, args, output) -> None:
        during.append(_tf32_settings())

    def load_hooked(path, device):
        loaded, meta = load_checkpoint(path, device)
        loaded.register_forward_hook(record)
        return loaded, meta

    model.register_forward_hook(record)
    rows = load_semantic_features([data.store], data.keys, config.t0, progress=False).rows
    items = [VideoItem(k, 1.0) for k in data.keys]
    predict_items(model, items, data.videos, rows, None, device=torch.device("cpu"))
    monkeypatch.setattr(predict_module, "load_checkpoint", load_hooked)
    scores = predict_module.predict([data.videos], ckpt, stores=[data.store], device="cpu")
    assert all(p.error is None for p in scores) and len(during) == 2 + 2  # predict_items, then predict
    assert set(during) == {("ieee", "ieee", "ieee")} and _tf32_settings()[0] == "tf32"


def test_float32_extraction_embeds_without_tf32(tiny_clip):
    """A float32 store is float32 on a GPU too: the image tower runs inside float32_math."""
    from clifvqa.extract.clip_model import load_clip
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=(1, 1), device="cpu", dtype="float32")
    during: list[tuple] = []
    sfe.bundle.model.vision_model.register_forward_hook(lambda *args: during.append(_tf32_settings()))
    sfe.score_frames(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
    assert during == [("ieee", "ieee", "ieee")] and _tf32_settings()[0] == "tf32"


# ---------------------------------------------------------------- 8: no buffer broadcast


def test_no_buffer_changes_in_training_so_ddp_broadcasts_none(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = tiny_config(4, fragments=replace(TINY_FRAGMENTS, num_clips_test=1).to_dict())
    model = build_model(config).train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert before and all(name.endswith(("relative_position_index", ".rows")) for name in before)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"keys": ["a", "b"], "semantic": _close_rows(2), "mos": torch.tensor([1.0, 2.0]),
             "fragments": torch.randn(2, 1, 3, *config.clip_shape)}
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer.train_step(model, optimizer, scaler, batch, config=RunConfig(), model_config=config,
                       device=torch.device("cpu"), dtype=None)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())

    class Stop(Exception):
        pass

    def ddp(module, **kwargs):
        raise Stop(kwargs)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    monkeypatch.setattr(Dist, "barrier", lambda self: None)  # one process plays rank 0 of 2: no group to wait on
    from clifvqa.train.data import SplitPlan, VideoItem

    with pytest.raises(Stop) as err:
        trainer.train_split(
            SplitPlan("s", [VideoItem("a.mp4", 1.0)]),
            replace(config, branches="spatial"),
            RunConfig(workers=0, data=DataConfig(videos=tmp_path)),
            None,
            tmp_path / "run",
            dist=Dist(0, 2, 0),
            progress=False,
        )
    assert err.value.args[0]["broadcast_buffers"] is False


# ---------------------------------------------------------------- 5: per-rank RNG


def test_each_rank_saves_and_resumes_its_own_rng_state(tmp_path):
    from clifvqa.train import checkpoint as ckpt

    config = tiny_config(4, branches="semantic")
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters())
    states, draws = [], []
    for rank in range(2):
        torch.manual_seed(distributed.rank_seed(7, rank))
        states.append(ckpt.capture_rng())
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])  # ranks draw different dropout masks
    ckpt.save_checkpoint(tmp_path / "last", model, config, {}, "", optimizer=optimizer,
                         train_state={"epoch": 0, "processes": 2}, rng=states)
    for rank in range(2):
        torch.manual_seed(123)
        assert ckpt.load_training_state(tmp_path / "last", optimizer, rank=rank)["processes"] == 2
        assert torch.equal(torch.rand(4), draws[rank])
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    ckpt.load_training_state(tmp_path / "last", optimizer, rank=2)  # not saved: left as it is
    assert torch.equal(torch.rand(4), expected)


# ---------------------------------------------------------------- 6: --dtype auto continues a store


def test_dtype_auto_continues_a_store_in_its_recorded_dtype(tmp_path, tiny_clip, make_video, monkeypatch):
    from clifvqa.extract import sfe
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.provenance import FingerprintMismatchError
    from clifvqa.features.store import open_store

    for i in range(2):
        make_video(f"v{i}.mp4", root=tmp_path / "ds", num_frames=3, width=64, height=48, seed=i)
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 1), device="cpu", threads=1, batch_crops=8)
    cpu_store, half_store = tmp_path / "cpu.zarr", tmp_path / "half.zarr"
    manifest = tmp_path / "one.csv"
    manifest.write_text("video\nv0.mp4\n")
    # auto is float32 on this CPU
    assert extract_dataset(tmp_path / "ds", cpu_store, manifest, config, progress=False).done == 1
    # a GPU resolves auto to float16
    real = sfe.resolve_dtype
    monkeypatch.setattr(sfe, "resolve_dtype",
                        lambda dtype, device: real("float16" if dtype == "auto" else dtype, device))
    summary = extract_dataset(tmp_path / "ds", cpu_store, None, config, progress=False)
    assert summary.ok and (summary.done, summary.skipped) == (1, 1)
    with open_store(cpu_store) as st:
        assert st.provenance["dtype"] == "float32" and len(st.keys()) == 2
    explained = ("extracted with dtype float32, this run computes in float16: "
                 "pass --dtype auto .* or --dtype float32")
    with pytest.raises(FingerprintMismatchError, match=explained):
        extract_dataset(tmp_path / "ds", cpu_store, None, replace(config, dtype="float16", retry_failed=True),
                        progress=False)
    monkeypatch.setattr(sfe, "resolve_dtype", real)
    # and the other way round, for real: a float16 store continued on this CPU with auto
    half = replace(config, dtype="float16")
    assert extract_dataset(tmp_path / "ds", half_store, manifest, half, progress=False).ok
    assert extract_dataset(tmp_path / "ds", half_store, None, config, progress=False).done == 1
    with open_store(half_store) as st:
        assert st.provenance["dtype"] == "float16" and len(st.keys()) == 2


# ---------------------------------------------------------------- 4: the benchmark times the trainer's step


def test_bench_train_times_the_trainers_step_under_its_autocast(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    seen = []
    real_step = trainer.train_step

    def step(*args, dtype, **kwargs):
        seen.append((dtype, torch.is_autocast_enabled("cpu")))
        return real_step(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(trainer, "amp_dtype", lambda config, device: torch.bfloat16)  # stand-in for a GPU
    monkeypatch.setattr(trainer, "train_step", step)
    keys, store = bench_train.make_inputs(tmp_path, 2, 16, 64, 48)
    result = bench_train.measure("tiny", 2, 1, keys, tmp_path, store, "cpu", 0)
    assert result["autocast"] == "bfloat16" and result["pinned"] is False
    assert seen and set(seen) == {(torch.bfloat16, False)}
    assert "tiny (16x128x128), batch 2, bfloat16" in bench_train.report(result)


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@needs_cuda
def test_gpu_single_gpu_training_and_evaluate_agree(tmp_path, make_train_set):
    from clifvqa.train.evaluate import evaluate

    data = make_train_set(tmp_path / "data", n=len(TAGS), split=TAGS)
    config = set_options(tiny(RunConfig()), epochs=2, batch_size=2, workers=0, num_clips_test=2, device="cuda",
                         manifest=data.manifest, videos=data.videos, stores=[data.store])
    summary = trainer.run_training(config, tmp_path / "run", progress=False)
    assert summary["finished"]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    for split in ("val", "test"):
        ev = evaluate(tmp_path / "run" / "best", data.manifest, data.videos, [data.store], device="cuda",
                      split=split, plot=False)
        assert ev.metrics["srocc"] == result[split]["srocc"] and ev.metrics["plcc"] == result[split]["plcc"]


@pytest.mark.gpu
@needs_cuda
def test_gpu_amp_dtype_is_native():
    major, _ = torch.cuda.get_device_capability()
    native = torch.bfloat16 if major >= 8 else torch.float16  # Ampere and later compute bf16
    assert amp_dtype(OptimConfig(), torch.device("cuda", 0)) == native


@pytest.mark.gpu
@needs_cuda
def test_gpu_readouts_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model(tiny_config(4, branches="semantic")).cuda().eval()
    rows = _close_rows(48).cuda()
    with torch.no_grad():
        full = model(rows)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            amp = model(rows)
    assert amp.dtype == torch.float32 and amp.unique().numel() == 48
    torch.testing.assert_close(amp, full, rtol=0, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_gpu_predict_equals_cpu(tmp_path, make_train_set):
    from clifvqa.features.store import open_store
    from clifvqa.predict import predict
    from clifvqa.train.checkpoint import save_checkpoint

    data = make_train_set(tmp_path / "data", n=2)
    with open_store(data.store) as st:
        prov, fp = st.provenance, st.fingerprint
    fragments = replace(TINY_FRAGMENTS, num_clips_test=2).to_dict()
    config = tiny_config(4, prov["prompts"]["groups"], fragments=fragments)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(config), config, prov, fp)
    cpu = predict([data.videos], ckpt, stores=[data.store], device="cpu")
    gpu = predict([data.videos], ckpt, stores=[data.store], device="cuda")
    for a, b in zip(cpu, gpu):
        assert a.error is None and b.error is None
        assert b.raw == pytest.approx(a.raw, rel=1e-5, abs=1e-6)  # TF32 would differ by ~1e-3


@pytest.mark.gpu
@needs_cuda
def test_gpu_continues_a_cpu_started_store(tmp_path, tiny_clip, make_video):
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.store import open_store

    for i in range(2):
        make_video(f"v{i}.mp4", root=tmp_path / "ds", num_frames=3, width=64, height=48, seed=i)
    manifest = tmp_path / "one.csv"
    manifest.write_text("video\nv0.mp4\n")
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 1), device="cpu", threads=1, batch_crops=8)
    assert extract_dataset(tmp_path / "ds", tmp_path / "f.zarr", manifest, config, progress=False).ok
    on_gpu = replace(config, device="cuda")  # dtype auto: float16 on a GPU, unless the store says otherwise
    summary = extract_dataset(tmp_path / "ds", tmp_path / "f.zarr", None, on_gpu, progress=False)
    assert summary.ok and summary.done == 1
    with open_store(tmp_path / "f.zarr") as st:
        assert st.provenance["dtype"] == "float32" and len(st.keys()) == 2


@pytest.mark.gpu
@needs_cuda
def test_gpu_bench_train_times_amp_from_pinned_memory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train

    keys, store = bench_train.make_inputs(tmp_path, 2, 16, 64, 48)
    result = bench_train.measure("tiny", 2, 1, keys, tmp_path, store, "cuda", 0)
    assert result["autocast"] in ("bfloat16", "float16") and result["pinned"] is True


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_torchrun_two_gpus_saves_each_ranks_rng(tmp_path, make_train_set):
    import os
    import subprocess

    from safetensors.torch import load_file

    data = make_train_set(tmp_path / "data", n=len(TAGS), split=TAGS)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clifvqa.cli", "train", "--manifest", str(data.manifest), "--videos", str(data.videos),
           "--store", str(data.store), "--out", str(out), "--tiny", "--epochs", "1", "--batch-size", "1",
           "--workers", "0", "--num-clips-test", "2", "--quiet", "--device", "cuda"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    tensors = load_file(str(out / "last" / "optimizer.safetensors"))
    assert not torch.equal(tensors["rng.torch"], tensors["rank1.rng.torch"])

