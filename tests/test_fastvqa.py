"""FAST-VQA network: official state-dict layout, window/gate/mask geometry, GRPB, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clifvqa.train.fastvqa import (
    VARIANTS,
    CheckpointMismatchError,
    FastVQAConfig,
    PatchMerging,
    adaptive_window_size,
    build_fastvqa,
    fragment_gate,
    load_fastvqa_checkpoint,
    shift_attention_mask,
    window_partition,
    window_reverse,
)

F32, I64 = torch.float32, torch.int64


def official_fast_b_layout() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Keys, shapes and dtypes of the official FAST-VQA-B evaluator, written from docs/FASTVQA-SPEC.md §8/§10."""
    p = "fragments_backbone."
    keys = {
        p + "patch_embed.proj.weight": ((96, 3, 2, 4, 4), F32),
        p + "patch_embed.proj.bias": ((96,), F32),
        p + "patch_embed.norm.weight": ((96,), F32),
        p + "patch_embed.norm.bias": ((96,), F32),
    }
    stages = [(96, 2, 3, True), (192, 2, 6, True), (384, 6, 12, True), (768, 2, 24, False)]
    for i, (c, depth, heads, frag) in enumerate(stages):
        for j in range(depth):
            b = f"{p}layers.{i}.blocks.{j}."
            keys[b + "norm1.weight"] = ((c,), F32)
            keys[b + "norm1.bias"] = ((c,), F32)
            keys[b + "attn.relative_position_bias_table"] = ((2535, heads), F32)
            if frag:
                keys[b + "attn.fragment_position_bias_table"] = ((2535, heads), F32)
            keys[b + "attn.relative_position_index"] = ((392, 392), I64)
            keys[b + "attn.qkv.weight"] = ((3 * c, c), F32)
            keys[b + "attn.qkv.bias"] = ((3 * c,), F32)
            keys[b + "attn.proj.weight"] = ((c, c), F32)
            keys[b + "attn.proj.bias"] = ((c,), F32)
            keys[b + "norm2.weight"] = ((c,), F32)
            keys[b + "norm2.bias"] = ((c,), F32)
            keys[b + "mlp.fc1.weight"] = ((4 * c, c), F32)
            keys[b + "mlp.fc1.bias"] = ((4 * c,), F32)
            keys[b + "mlp.fc2.weight"] = ((c, 4 * c), F32)
            keys[b + "mlp.fc2.bias"] = ((c,), F32)
        if i < 3:
            keys[f"{p}layers.{i}.downsample.reduction.weight"] = ((2 * c, 4 * c), F32)
            keys[f"{p}layers.{i}.downsample.norm.weight"] = ((4 * c,), F32)
            keys[f"{p}layers.{i}.downsample.norm.bias"] = ((4 * c,), F32)
    keys[p + "norm.weight"] = ((768,), F32)
    keys[p + "norm.bias"] = ((768,), F32)
    keys["vqa_head.fc_hid.weight"] = ((64, 768, 1, 1, 1), F32)
    keys["vqa_head.fc_hid.bias"] = ((64,), F32)
    keys["vqa_head.fc_last.weight"] = ((1, 64, 1, 1, 1), F32)
    keys["vqa_head.fc_last.bias"] = ((1,), F32)
    return keys


@pytest.fixture(scope="module")
def fast_b():
    torch.manual_seed(0)
    return build_fastvqa("fast-b").eval()


def _tiny(seed: int = 0, config: FastVQAConfig | str = "tiny"):
    """Tiny model with weights where GRPB matters: big bias tables, LayerNorm weights near 1."""
    torch.manual_seed(seed)
    model = build_fastvqa(config).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if "bias_table" in name:
                value.copy_(torch.randn(value.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                value.copy_(1 + 0.1 * torch.randn(value.shape, generator=g))
    return model


# ------------------------------------------------------------------------------ layout


def test_fast_b_state_dict_equals_official_layout(fast_b):
    sd = fast_b.state_dict()
    expected = official_fast_b_layout()
    assert len(expected) == 197
    assert list(sd) == list(expected)  # same keys, in the official order
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in fast_b.parameters()) == 28_127_901
    assert sum(v.numel() for v in sd.values()) == 29_971_869
    assert sum(p.numel() for p in fast_b.vqa_head.parameters()) == 49_281
    frag_tables = [v for k, v in sd.items() if "fragment_position_bias_table" in k]
    assert len(frag_tables) == 10 and all(not t.any() for t in frag_tables)  # created as zeros


def test_relative_position_index_is_standard_video_swin(fast_b):
    indices = [v for k, v in fast_b.state_dict().items() if k.endswith("relative_position_index")]
    assert len(indices) == 12 and all(torch.equal(i, indices[0]) for i in indices)
    index = indices[0]
    # token 0 = (d0,h0,w0), token 391 = (d7,h6,w6); index = (Δd+7)·169 + (Δh+6)·13 + (Δw+6), Δ = query − key
    assert index[0, 0] == 7 * 169 + 6 * 13 + 6
    assert index[0, 391] == 0
    assert index[391, 0] == 2534 == index.max()
    assert index[1, 0] == 7 * 169 + 6 * 13 + 7  # Δw = +1


def test_variants_and_config_round_trip():
    for name in ("fast-b", "faster", "fast-m", "tiny"):
        config = VARIANTS[name]
        again = FastVQAConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
    assert VARIANTS["fast-m"] == FastVQAConfig(window_size=(4, 4, 4), frag_biases=(False,) * 4)
    # the FAST-VQA-M code path at tiny width: no fragment tables, (2·4−1)³ = 343-row tables
    tiny_m = {**VARIANTS["tiny"].to_dict(), "window_size": [4, 4, 4], "frag_biases": [False] * 4}
    fast_m = build_fastvqa(FastVQAConfig.from_dict(tiny_m)).state_dict()
    assert not any("fragment_position_bias_table" in k for k in fast_m)
    assert fast_m["fragments_backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (343, 1)
    with pytest.raises(ValueError, match="unknown FastVQAConfig fields"):
        FastVQAConfig.from_dict({"embed_dim": 8, "colour": 1})
    with pytest.raises(ValueError, match="unknown FAST-VQA variant"):
        build_fastvqa("fast-x")
    with pytest.raises(ValueError, match="head_in"):
        FastVQAConfig(embed_dim=24)


def test_adaptive_window_size():
    assert adaptive_window_size((8, 7, 7), (32, 224, 224), (32, 224, 224)) == (8, 7, 7)
    assert adaptive_window_size((4, 4, 4), (16, 128, 128), (32, 224, 224)) == (2, 2, 2)  # FAST-VQA-M
    assert adaptive_window_size((8, 7, 7), (32, 160, 160), (32, 224, 224)) == (8, 5, 5)  # FasterVQA-MS
    model = build_fastvqa("tiny")
    with pytest.raises(ValueError, match="adaptive_window_size=False"):
        model(torch.zeros(1, 3, 32, 256, 256))


# ------------------------------------------------------------------------------ geometry


def test_window_partition_order_and_round_trip():
    x = torch.arange(2 * 4 * 6 * 6 * 2, dtype=torch.float32).view(2, 4, 6, 6, 2)
    windows = window_partition(x, (2, 3, 3))
    assert windows.shape == (2 * 2 * 2 * 2, 18, 2)
    # window 1 = (batch 0, nD 0, nH 0, nW 1); its token 4 = (d0, h1, w1) → position (0, 1, 4)
    assert torch.equal(windows[1, 4], x[0, 0, 1, 4])
    # window 8 is the first of batch 1; token 9 = (d1, h0, w0)
    assert torch.equal(windows[8, 9], x[1, 1, 0, 0])
    assert torch.equal(window_reverse(windows, (2, 3, 3), 2, 4, 6, 6), x)


def _win_tok(d, h, w, size=(16, 56, 56), window=(8, 7, 7)):
    """(window, token) of the rolled-grid position (d, h, w) under window_partition's order."""
    n = [s // wi for s, wi in zip(size, window)]
    win = ((d // window[0]) * n[1] + h // window[1]) * n[2] + w // window[2]
    tok = ((d % window[0]) * window[1] + h % window[1]) * window[2] + w % window[2]
    return win, tok


def test_gate_stage0_hand_checked_pairs():
    size, window = (16, 56, 56), (8, 7, 7)
    plain = fragment_gate(size, window, (0, 0, 0), torch.device("cpu"))
    assert plain.shape == (128, 392, 392) and plain.dtype == torch.uint8
    # unshifted: fragment = h // 8, w // 8 (7×7 grid over 56×56)
    w0, t0 = _win_tok(0, 7, 0)
    _, t1 = _win_tok(3, 8, 0)
    assert plain[w0, t0, t1] == 1  # rows 7 and 8 lie in fragments 0 and 1
    wa, ta = _win_tok(0, 7, 7)
    _, tb = _win_tok(0, 8, 8)
    assert plain[wa, ta, tb] == 2
    assert plain[0].max() == 0  # rows/cols 0-6 are all in fragment 0
    assert set(plain.unique().tolist()) == {0, 1, 2}

    shifted = fragment_gate(size, window, (4, 3, 3), torch.device("cpu"))
    # rolled position r holds original position r + shift (mod size)
    w0, q = _win_tok(0, 0, 0)  # original (4, 3, 3): fragment (0, 0)
    _, k = _win_tok(0, 6, 6)  # original (4, 9, 9): fragment (1, 1)
    assert shifted[w0, q, k] == 2
    wl, q = _win_tok(0, 49, 49)  # original (4, 52, 52): fragment (6, 6)
    _, k = _win_tok(0, 55, 55)  # original (4, 2, 2), wrapped around by the roll: fragment (0, 0)
    assert shifted[wl, q, k] == 12
    _, k = _win_tok(0, 55, 49)  # original (4, 2, 52): fragment (0, 6)
    assert shifted[wl, q, k] == 6
    wm, q = _win_tok(0, 49, 42)  # original (4, 52, 45): fragment (6, 5)
    _, k = _win_tok(0, 55, 45)  # original (4, 2, 48): fragment (0, 6)
    assert shifted[wm, q, k] == 7
    assert torch.equal(shifted, shifted.transpose(1, 2))


def test_shift_mask_regions():
    cpu = torch.device("cpu")
    mask = shift_attention_mask((16, 56, 56), (8, 7, 7), (4, 3, 3), cpu)
    assert mask.shape == (128, 392, 392)
    assert not mask[0].any()  # an interior window never mixes roll regions
    wl, a = _win_tok(0, 49, 0)  # rolled rows 49-52: region [-7:-3]
    _, b = _win_tok(0, 53, 0)  # rolled rows 53-55: region [-3:], wrapped from the top
    _, c = _win_tok(0, 52, 0)
    assert mask[wl, a, b] == -100.0 and mask[wl, a, c] == 0.0
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    # stage 3: 7×7 map, shift (4, 0, 0): only time splits regions
    mask3 = shift_attention_mask((16, 7, 7), (8, 7, 7), (4, 0, 0), cpu)
    assert mask3.shape == (2, 392, 392) and not mask3[0].any()
    assert mask3[1, 0, 4 * 49] == -100.0  # d 8 vs d 12
    assert mask3[1, 0, 3 * 49 + 48] == 0.0  # d 8 vs d 11, any h/w


def test_patch_merging_order_and_odd_padding():
    merge = PatchMerging(1)
    merge.norm, merge.reduction = torch.nn.Identity(), torch.nn.Identity()
    x = torch.tensor([[1.0, 2.0, 3.0], [11.0, 12.0, 13.0], [21.0, 22.0, 23.0]]).view(1, 1, 3, 3, 1)
    out = merge(x)  # padded to 4×4 with zeros
    assert out.shape == (1, 1, 2, 2, 4)
    # channel order: (h even, w even), (h odd, w even), (h even, w odd), (h odd, w odd)
    assert out[0, 0, 0, 0].tolist() == [1.0, 11.0, 2.0, 12.0]
    assert out[0, 0, 0, 1].tolist() == [3.0, 13.0, 0.0, 0.0]
    assert out[0, 0, 1, 0].tolist() == [21.0, 0.0, 22.0, 0.0]
    assert PatchMerging(4).reduction.bias is None


def test_shifted_grpb_attention_matches_pairwise_reference():
    """One shifted GRPB block against a token-pair formulation written from the spec alone."""
    torch.manual_seed(3)
    config = FastVQAConfig(
        embed_dim=16, depths=(2, 1), num_heads=(2, 2), window_size=(2, 3, 3), frag_biases=(True, False), head_in=32
    )
    block = build_fastvqa(config).fragments_backbone.layers[0].blocks[1]
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
        block.attn.fragment_position_bias_table.normal_()
    size, window, shift = (4, 6, 6), (2, 3, 3), (1, 1, 1)
    x = torch.randn(1, *size, 16)
    mask = shift_attention_mask(size, window, shift, torch.device("cpu"))
    with torch.no_grad():
        got = block._attention_part(x, mask, None)

        pos = torch.stack(torch.meshgrid(*(torch.arange(s) for s in size), indexing="ij"), -1).view(-1, 3)
        rolled = (pos - torch.tensor(shift)) % torch.tensor(size)  # where each token sits after the roll
        frag = pos * torch.tensor([1, 3, 3]) // torch.tensor(size)  # fragment (0, 3h//6, 3w//6) of the original place
        win_id = rolled // torch.tensor(window)
        offset = rolled % torch.tensor(window)
        axes = zip(rolled.T, size, window, shift)
        region = torch.stack([torch.where(r < s - w, 0, torch.where(r < s - sh, 1, 2)) for r, s, w, sh in axes], -1)
        same_window = (win_id[:, None] == win_id[None, :]).all(-1)
        delta = offset[:, None] - offset[None, :] + torch.tensor(window) - 1  # query − key, shifted ≥ 0
        rel_index = delta[..., 0] * 25 + delta[..., 1] * 5 + delta[..., 2]
        gate = (frag[:, None] - frag[None, :]).abs().sum(-1).float()
        R = block.attn.relative_position_bias_table[rel_index].permute(2, 0, 1)
        Fb = block.attn.fragment_position_bias_table[rel_index].permute(2, 0, 1)
        bias = R * gate + Fb * (1 - gate)
        shift_mask = torch.where((region[:, None] != region[None, :]).any(-1), -100.0, 0.0)

        tokens = block.norm1(x).view(-1, 16)
        q, k, v = block.attn.qkv(tokens).view(-1, 3, 2, 8).permute(1, 2, 0, 3)
        logits = (q * 8**-0.5) @ k.transpose(-1, -2) + bias + shift_mask
        logits = logits.masked_fill(~same_window, float("-inf"))
        out = (logits.softmax(-1) @ v).permute(1, 0, 2).reshape(-1, 16)
        expected = block.attn.proj(out).view(1, *size, 16)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ------------------------------------------------------------------------------ forward


def test_tiny_forward_shapes_and_eval_determinism():
    model = _tiny()
    x = torch.randn(2, 3, 32, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.fragments_backbone(x)
        a = model.vqa_head(feats)
        b = model(x)
    assert feats.shape == (2, 128, 16, 7, 7)
    assert a.shape == (2, 1, 16, 7, 7)
    assert torch.equal(a, b)
    assert not model.training  # calling the model never switches its mode


def test_grpb_with_equal_tables_reduces_to_plain_rpb():
    # R·g + F·(1−g) == R when F == R: the GRPB model equals the same weights without fragment tables.
    grpb = _tiny(1)
    with torch.no_grad():
        for layer in grpb.fragments_backbone.layers:
            for blk in layer.blocks:
                if blk.attn.frag_bias:
                    blk.attn.fragment_position_bias_table.copy_(blk.attn.relative_position_bias_table)
    plain = build_fastvqa(FastVQAConfig(**{**VARIANTS["tiny"].to_dict(), "frag_biases": [False] * 4})).eval()
    state = {k: v for k, v in grpb.state_dict().items() if "fragment_position" not in k}
    plain.load_state_dict(state)
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(1))  # window (4, 3, 3)
    with torch.no_grad():
        same = grpb(x)
        assert torch.allclose(same, plain(x), atol=1e-5)
        g = torch.Generator().manual_seed(2)
        for layer in grpb.fragments_backbone.layers:  # now make F differ from R
            for blk in layer.blocks:
                if blk.attn.frag_bias:
                    blk.attn.fragment_position_bias_table.normal_(0, 2, generator=g)
        assert (grpb(x) - same).abs().max() > 1e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(2))
    grads = []
    for ckpt in (False, True):
        model = build_fastvqa("tiny", checkpoint_grad=ckpt)
        model.load_state_dict(_tiny(2).state_dict())
        model.train()
        torch.manual_seed(7)  # same dropout and stochastic-depth draws
        model(x).mean().backward()
        grads.append(model.fragments_backbone.layers[0].blocks[0].attn.fragment_position_bias_table.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ------------------------------------------------------------------------------ checkpoints


def _assert_same(model, state):
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_official_layout_round_trip_is_strict(tmp_path):
    source = _tiny(4).state_dict()
    path = tmp_path / "FAST_VQA_tiny.pth"
    # Training saves also carry numpy metrics: still loadable with weights_only=True.
    torch.save({"state_dict": source, "validation_results": {"srocc": np.float64(0.81)}}, path)
    target = build_fastvqa("tiny")
    report = load_fastvqa_checkpoint(target, path)
    assert report.layout == "official" and report.loaded == len(source) and not report.kept
    _assert_same(target, source)


def test_backbone_prefixed_layout(tmp_path):
    source = _tiny(5).state_dict()
    # v0.x naming: backbone.* and (before the notebook's cls → vqa rename) cls_head.*
    old = {
        k.replace("fragments_backbone.", "backbone.", 1).replace("vqa_head.", "cls_head.", 1): v
        for k, v in source.items()
    }
    torch.save({"state_dict": old}, tmp_path / "fast_vqa_v0_3.pth")
    target = build_fastvqa("tiny")
    report = load_fastvqa_checkpoint(target, tmp_path / "fast_vqa_v0_3.pth")
    assert report.layout == "backbone-prefixed" and report.loaded == len(source)
    _assert_same(target, source)


def test_kinetics400_layout_remap(tmp_path):
    source = _tiny(6).state_dict()
    k400 = {
        k.replace("fragments_backbone.", "backbone."): v
        for k, v in source.items()
        if k.startswith("fragments_backbone.") and "fragment_position" not in k and "relative_position_index" not in k
    }
    k400["cls_head.fc_cls.weight"] = torch.randn(400, 128)
    k400["cls_head.fc_cls.bias"] = torch.zeros(400)
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save({"state_dict": k400}, path)
    target = build_fastvqa("tiny")
    head_before = {k: v.clone() for k, v in target.vqa_head.state_dict().items()}
    report = load_fastvqa_checkpoint(target, path)
    assert report.layout == "kinetics400"
    assert report.skipped == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    tiny = VARIANTS["tiny"]
    n_blocks = sum(tiny.depths)
    n_frag = sum(d for d, frag in zip(tiny.depths, tiny.frag_biases) if frag)
    assert len(report.kept) == n_frag + n_blocks + 4  # fragment tables, every index, the head
    assert report.loaded == len(k400) - 2
    own = target.state_dict()
    for k, v in k400.items():
        if k.startswith("backbone."):
            assert torch.equal(own["fragments_" + k], v)
    assert all(not v.any() for k, v in own.items() if "fragment_position" in k)
    assert all(torch.equal(v, head_before[k]) for k, v in target.vqa_head.state_dict().items())

    # FAST-VQA-M style: another window size → the bias tables are skipped, the rest loads
    small_window = build_fastvqa(FastVQAConfig(**{**VARIANTS["tiny"].to_dict(), "window_size": [4, 4, 4]}))
    report = load_fastvqa_checkpoint(small_window, path)
    assert sum("relative_position_bias_table" in k for k in report.skipped) == n_blocks


def test_misfitting_checkpoint_lists_what_differs(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": build_fastvqa("tiny").state_dict()}, path)
    deeper = build_fastvqa(FastVQAConfig(**{**VARIANTS["tiny"].to_dict(), "depths": [1, 1, 3, 2]}))
    before = deeper.state_dict()["vqa_head.fc_last.bias"].clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_fastvqa_checkpoint(deeper, path)
    message = str(err.value)
    assert "official layout" in message and "missing 15 (fragments_backbone.layers.2.blocks.2." in message
    assert torch.equal(deeper.state_dict()["vqa_head.fc_last.bias"], before)  # untouched

    wider = build_fastvqa(FastVQAConfig(**{**VARIANTS["tiny"].to_dict(), "embed_dim": 8, "head_in": 64}))
    expected = r"mis-shaped \d+ \(fragments_backbone.patch_embed.proj.weight \(16, 3, 2, 4, 4\) vs model \(8, "
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_fastvqa_checkpoint(wider, path)

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="not a FAST-VQA or Video Swin checkpoint"):
        load_fastvqa_checkpoint(deeper, tmp_path / "other.pth")

    torch.save({"state_dict": build_fastvqa("tiny").state_dict(), "config": FastVQAConfig}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointMismatchError, match="weights_only"):
        load_fastvqa_checkpoint(deeper, tmp_path / "pickled.pth")
