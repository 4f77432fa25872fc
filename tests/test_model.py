"""CLiF-VQA model: shapes, Eq. 8 resampling, prompt subsets, ablation switches, FAST-VQA keys."""

from __future__ import annotations

import pytest
import torch

from clifvqa.train.fastvqa import VARIANTS, load_fastvqa_checkpoint
from clifvqa.train.fragments import FragmentConfig
from clifvqa.train.model import ClifVQAConfig, SemanticBranch, build_model, resample_time, stack_semantic, tiny_config

GROUPS3 = ("objective", "subjective", "objective")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resample_time_by_hand():
    x = torch.tensor([[1.0, 3.0]])  # one row, T = 2 -> t0 = 3: ends kept, midpoint between
    assert torch.allclose(resample_time(x, 3), torch.tensor([[1.0, 2.0, 3.0]]))
    x = torch.tensor([[0.0, 1.0, 4.0]])  # T = 3 -> t0 = 5: samples at 0, .5, 1, 1.5, 2
    assert torch.allclose(resample_time(x, 5), torch.tensor([[0.0, 0.5, 1.0, 2.5, 4.0]]))
    assert torch.equal(resample_time(torch.tensor([[7.0]]), 4), torch.full((1, 4), 7.0))  # T = 1
    y = torch.randn(2, 6, 32)
    assert resample_time(y, 32) is y
    assert stack_semantic([torch.randn(5, 6), torch.randn(1, 6)], 8).shape == (2, 6, 8)


@pytest.mark.parametrize("r", [1, 3, 22])
def test_shapes_through_the_whole_model(r):
    torch.manual_seed(0)
    cfg = tiny_config(r, ("objective",) * r)
    model = build_model(cfg).eval()
    t, h, w = cfg.clip_shape
    assert cfg.feature_sizes() == (2 * r, 1 * 8 * 4 * 4)
    for frames in (1, 7, 40):
        for k in (1, 3):
            out = model(torch.randn(2, 2 * r, frames), torch.randn(2, k, 3, t, h, w))
            assert out.shape == (2,) and torch.isfinite(out).all()


def test_spatial_feature_size_follows_the_configs():
    # FAST-VQA-B on 32x224x224 clips: map [1, 16, 7, 7] -> 784 values (paper Eqs. 10-11)
    full = ClifVQAConfig(r=4)
    assert full.spatial_map_shape() == (1, 16, 7, 7) and full.feature_sizes() == (8, 784)
    torch.manual_seed(0)
    for frag in (
        FragmentConfig(fragments_h=4, fragments_w=3, clip_len=8, aligned=8),
        FragmentConfig(fragments_h=2, fragments_w=2, clip_len=16, aligned=8),
    ):
        cfg = ClifVQAConfig(r=2, fastvqa=VARIANTS["tiny"], fragments=frag)
        model = build_model(cfg).eval()
        qmap = model.fastvqa(torch.randn(1, 3, *cfg.clip_shape))
        assert tuple(qmap.shape[1:]) == cfg.spatial_map_shape()


def test_prompt_subset_selects_avg_and_max_rows():
    # r = 3 prompts, groups (obj, sub, obj): objective keeps rows 0, 2 (averages) and 3, 5
    # (maxima); subjective keeps 1 and 4.
    assert ClifVQAConfig(r=3, prompt_groups_of=GROUPS3, prompt_groups="objective").semantic_rows() == [0, 2, 3, 5]
    assert ClifVQAConfig(r=3, prompt_groups_of=GROUPS3, prompt_groups="subjective").semantic_rows() == [1, 4]
    assert ClifVQAConfig(r=3, prompt_groups_of=GROUPS3).semantic_rows() == [0, 1, 2, 3, 4, 5]
    torch.manual_seed(0)
    full = SemanticBranch(ClifVQAConfig(r=3, prompt_groups_of=GROUPS3, t0=8))
    obj = SemanticBranch(ClifVQAConfig(r=3, prompt_groups_of=GROUPS3, t0=8, prompt_groups="objective"))
    obj.load_state_dict(full.state_dict())  # one shared MLP per row: same weights, same rows
    x = torch.randn(2, 6, 11)
    assert torch.allclose(obj(x), full(x)[:, [0, 2, 3, 5]])
    assert obj(x).shape == (2, 4)


def test_prompt_subset_refusals():
    with pytest.raises(ValueError, match="no subjective prompts"):
        ClifVQAConfig(r=2, prompt_groups_of=("objective", "objective"), prompt_groups="subjective")
    with pytest.raises(ValueError, match="needs the group of each stored prompt"):
        ClifVQAConfig(r=2, prompt_groups="objective")
    with pytest.raises(ValueError, match=r"\[B, 6, T\]"):
        SemanticBranch(ClifVQAConfig(r=3))(torch.randn(1, 4, 5))


def test_ablation_switches_give_the_documented_readouts():
    torch.manual_seed(0)
    s = torch.randn(3, 6, 9)
    base = tiny_config(3, GROUPS3)
    x = torch.randn(3, 2, 3, *base.clip_shape)

    sem = build_model(tiny_config(3, GROUPS3, branches="semantic", regression_head=False)).eval()
    assert sem.fastvqa is None and sem.head is None
    assert torch.allclose(sem(s), sem.semantic(s).mean(dim=1))  # mean of F_s
    assert torch.allclose(sem(s, None), sem(s, x))  # fragments are not used

    spa = build_model(tiny_config(3, GROUPS3, branches="spatial", regression_head=False)).eval()
    assert spa.semantic is None and spa.head is None
    with torch.no_grad():
        fast_score = spa.fastvqa(x.flatten(0, 1)).view(3, 2, -1).mean(dim=(1, 2))  # FAST-VQA's own score
        assert torch.allclose(spa(None, x), fast_score, atol=1e-6)

    both = build_model(tiny_config(3, GROUPS3, regression_head=False)).eval()
    with torch.no_grad():
        expected = both.fastvqa(x.flatten(0, 1)).view(3, 2, -1).mean(dim=(1, 2)) + both.semantic(s).mean(dim=1)
        assert torch.allclose(both(s, x), expected, atol=1e-6)

    head_sem = build_model(tiny_config(3, GROUPS3, branches="semantic", prompt_groups="objective"))
    assert head_sem.head.fc3.in_features == 4  # 2 objective prompts x (avg, max)
    head_spa = build_model(tiny_config(3, GROUPS3, branches="spatial"))
    assert head_spa.head.fc3.in_features == 128  # F_f only


def test_video_score_is_the_mean_of_clip_scores():
    torch.manual_seed(0)
    model = build_model(tiny_config(2, ("objective", "subjective"))).eval()
    cfg = model.config
    s, x = torch.randn(2, 4, 5), torch.randn(2, 3, 3, *cfg.clip_shape)
    with torch.no_grad():
        per_clip = model.clip_scores(s, x)
        assert per_clip.shape == (2, 3)
        assert torch.allclose(model(s, x), per_clip.mean(dim=1))
        # F_s is shared: the head of clip j sees concat(F_s, F_f of clip j)
        f_s = model.semantic(s)
        f_f = model.fastvqa(x[:, 1]).flatten(1)
        assert torch.allclose(per_clip[:, 1], model.head(torch.cat([f_s, f_f], dim=1)), atol=1e-6)
    with pytest.raises(ValueError, match="clip_shape"):
        model(s, torch.randn(2, 1, 3, 8, 64, 64))


def test_submodule_names_and_fastvqa_weights_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(2, ("objective", "subjective")))
    keys = model.state_dict().keys()
    assert {"semantic.fc1.weight", "semantic.fc2.weight", "head.fc3.weight", "head.fc4.bias"} <= set(keys)
    assert "fastvqa.fragments_backbone.patch_embed.proj.weight" in keys and "fastvqa.vqa_head.fc_last.weight" in keys
    # an official-layout FAST-VQA file ({"state_dict": fragments_backbone.* / vqa_head.*}) loads
    other = build_model(tiny_config(2, ("objective", "subjective")))
    torch.save({"state_dict": other.fastvqa.state_dict()}, tmp_path / "fast.pth")
    load_fastvqa_checkpoint(model.fastvqa, tmp_path / "fast.pth")
    for k, v in other.fastvqa.state_dict().items():
        assert torch.equal(model.fastvqa.state_dict()[k], v)
    assert [p for p in model.backbone_parameters()] == list(model.fastvqa.fragments_backbone.parameters())


def test_config_round_trip():
    cfg = tiny_config(3, GROUPS3, prompt_groups="subjective", branches="both", regression_head=False)
    again = ClifVQAConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.semantic_rows() == [1, 4]
    with pytest.raises(ValueError, match="unknown ClifVQAConfig fields"):
        ClifVQAConfig.from_dict({**cfg.to_dict(), "bogus": 1})
