"""Prompt files as a new user writes them: documented formats, BOM, empty prompts, duplicates,
softmax over too few prompts, and one rule for `extract` and `store rescore`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.extract.prompts import PromptFileError, PromptSet, clip_text_key, load_prompts

README = Path(__file__).resolve().parents[1] / "README.md"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- documentation


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}\n")
    end = min(text.index(h, start + 4) for h in ("\n## ", "\n### ") if h in text[start + 4:])
    return text[start:end]


def test_readme_documents_both_formats_and_its_examples_load(tmp_path):
    section = _readme_section("Prompt files")
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    kinds = [kind for kind, _ in blocks]
    assert kinds.count("json") == 2 and kinds.count("text") == 1
    for k, (kind, body) in enumerate(blocks):
        prompts = load_prompts(_write(tmp_path, f"example{k}.{kind}", body), softmax="group")
        assert len(prompts) >= 4 and set(prompts.groups) == {"objective", "subjective"}
    assert "constant 1.0" in section and "byte-order mark" in section


def test_extract_and_rescore_help_point_to_the_readme():
    for command in (["extract"], ["store", "rescore"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        text = " ".join(result.output.split())
        assert "objective: sharp" in text and "README" in text and "Prompt files" in text


def test_load_prompts_docstring_shows_every_format():
    doc = load_prompts.__doc__ or ""
    assert '{"template": "a {} photo", "objective": ["sharp", "blurry"]' in doc
    assert '[{"text": "a sharp photo", "group": "objective"}' in doc
    assert "objective: sharp" in doc and "byte-order mark" in doc


# ---------------------------------------------------------------- byte-order mark


@pytest.mark.parametrize("name, content", [
    ("p.txt", "template: a {} frame\nobjective: sharp\nsubjective: calm\n"),
    ("p.json", json.dumps({"objective": ["sharp"], "subjective": ["calm"]})),
])
def test_a_byte_order_mark_is_accepted(tmp_path, name, content):
    # Before: the text file said "line 1: unknown label '\ufeffobjective'"; the JSON one was
    # taken for text and refused the same way.
    plain = load_prompts(_write(tmp_path, name, content))
    with_bom = load_prompts(_write(tmp_path, "bom-" + name, b"\xef\xbb\xbf" + content.encode()))
    assert with_bom == plain


def test_utf16_file_says_to_save_as_utf8(tmp_path):
    f = _write(tmp_path, "p.txt", "objective: sharp\n".encode("utf-16"))
    with pytest.raises(PromptFileError, match=r"p\.txt is not UTF-8 text; save it as UTF-8"):
        load_prompts(f)


# ---------------------------------------------------------------- empty prompts


@pytest.mark.parametrize("name, content, where", [
    ("p.json", '{"objective": ["sharp", ""], "subjective": ["calm"]}', "objective[1]"),
    ("p.json", '{"objective": ["sharp"], "subjective": ["  \\t"]}', "subjective[0]"),
    ("p.json", '[{"text": "a sharp photo", "group": "objective"}, {"text": " ", "group": "objective"}]',
     "item 1"),
    ("p.txt", "objective: sharp\nobjective:   \nsubjective: calm\n", "line 2"),
])
def test_empty_prompts_are_refused_naming_file_and_place(tmp_path, name, content, where):
    # Before: '{"objective": ["sharp", ""]}' gave the prompt "a photo that looks ."
    f = _write(tmp_path, name, content)
    with pytest.raises(PromptFileError) as info:
        load_prompts(f)
    assert _one_line(info.value).startswith(f"prompt file {f}, {where}: empty prompt")


def test_empty_words_are_refused_in_code_too():
    with pytest.raises(ValueError, match="empty prompt ''"):
        PromptSet.from_words(["sharp", ""], ["calm"])
    with pytest.raises(ValueError, match="empty prompt"):
        PromptSet(("a sharp photo", " "), ("objective", "objective"))


# ---------------------------------------------------------------- too few prompts per softmax


def test_one_prompt_gives_constant_features_and_is_refused(tiny_clip, tmp_path):
    """The failure: softmax over a single prompt is exactly 1.0 for every crop, whatever the
    image. Now the extractor refuses it before loading anything else."""
    import torch

    from clifvqa.extract.clip_model import load_clip
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    one = PromptSet(("a sharp photo",), ("objective",))
    bundle = load_clip(str(tiny_clip), "cpu")
    with pytest.raises(ValueError, match=r"the only prompt is 'a sharp photo'.*constant 1\.0"):
        SemanticFeatureExtractor(bundle, one, grid=(2, 2), device="cpu")
    # What it would have computed (the scoring rule itself): one logit per crop -> 1.0.
    logits = torch.randn(5, 1) * 30
    assert torch.equal(logits.softmax(dim=-1), torch.ones(5, 1))


@pytest.mark.parametrize("content, softmax, where, what", [
    ("objective: sharp\n", "all", "line 1", "the only prompt is 'a photo that looks sharp.'"),
    ("objective: sharp\nobjective: blurry\n\nsubjective: boring\n", "group", "line 4",
     "the subjective group has only 'a photo that looks boring.'"),
    ('{"objective": ["sharp"], "subjective": ["boring", "calm"]}', "group", "objective[0]",
     "the objective group has only 'a photo that looks sharp.'"),
])
def test_fewer_than_two_prompts_per_softmax_are_refused(tmp_path, content, softmax, where, what):
    f = _write(tmp_path, "p.json" if content.startswith("{") else "p.txt", content)
    with pytest.raises(PromptFileError) as info:
        load_prompts(f, softmax)
    message = _one_line(info.value)
    assert message.startswith(f"prompt file {f}, {where}: softmax {softmax!r} needs at least 2 prompts")
    assert what in message and "constant 1.0" in message


def test_softmax_blocks_accept_what_has_two_or_more(tmp_path):
    two = load_prompts(_write(tmp_path, "a.txt", "objective: sharp\nsubjective: boring\n"), "all")
    assert two.softmax_blocks("all") == [[0, 1]]
    with pytest.raises(ValueError, match="objective group has only"):
        two.softmax_blocks("group")
    # An absent group is no softmax at all: objective-only prompts with per-group softmax are fine.
    only_objective = load_prompts(_write(tmp_path, "b.txt", "objective: sharp\nobjective: blurry\n"), "group")
    assert only_objective.softmax_blocks("group") == [[0, 1]]
    # Without a softmax mode the file alone is read (e.g. to inspect it).
    assert len(load_prompts(_write(tmp_path, "c.txt", "objective: sharp\n"))) == 1


def test_extract_and_rescore_share_the_rule_one_line_exit_2(tmp_path):
    """Both commands refuse the file before any model is loaded or store is opened."""
    one = _write(tmp_path, "one.txt", "# a single prompt\nobjective: sharp\n")
    group = _write(tmp_path, "group.txt", "objective: sharp\nobjective: blurry\nsubjective: boring\n")
    (tmp_path / "videos").mkdir()
    extract = ["extract", str(tmp_path / "videos"), "-o", str(tmp_path / "s.zarr"), "--device", "cpu",
               "--clip-model", str(tmp_path / "no-model")]
    rescore = ["store", "rescore", str(tmp_path / "no-store.zarr"), "-o", str(tmp_path / "d.zarr")]
    cases = [(one, "line 2", "all"), (group, "line 3", "group")]
    for (f, where, softmax), command in [(case, cmd) for case in cases for cmd in (extract, rescore)]:
        result = CliRunner().invoke(main, [*command, "--prompts", str(f), "--softmax", softmax])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1
        expected = f"error: prompt file {f}, {where}: softmax {softmax!r} needs at least 2 prompts"
        assert lines[0].startswith(expected)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "d.zarr").exists()


# ---------------------------------------------------------------- duplicates


def test_clip_reads_case_and_spacing_variants_as_one_prompt(tiny_clip):
    """Why duplicates are compared by clip_text_key: the tokenizer gives them the same ids."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_clip))
    variants = ["a photo that looks sharp.", "A Photo that looks  SHARP.", " a photo that looks\tsharp . "]
    assert len({tuple(tokenizer(v)["input_ids"]) for v in variants}) == 1
    assert len({clip_text_key(v) for v in variants}) == 1
    different = ["a photo that looks high contrast.", "a photo that looks highcontrast."]
    assert len({tuple(tokenizer(v)["input_ids"]) for v in different}) == 2
    assert len({clip_text_key(v) for v in different}) == 2


@pytest.mark.parametrize("name, content, where, first", [
    ("p.txt", "objective: sharp\nsubjective: calm\nsubjective: Sharp\n", "line 3", "line 1"),
    ("p.json", '{"objective": ["sharp", "blurry"], "subjective": ["calm", "blurry "]}',
     "subjective[1]", "objective[1]"),
    ("p.json", '[{"text": "a calm photo", "group": "subjective"},'
               ' {"text": "A calm  photo", "group": "objective"}]',
     "item 1", "item 0"),
])
def test_duplicates_are_refused_naming_both_places(tmp_path, name, content, where, first):
    f = _write(tmp_path, name, content)
    with pytest.raises(PromptFileError) as info:
        load_prompts(f)
    message = _one_line(info.value)
    assert message.startswith(f"prompt file {f}, {where}: ")
    assert f"repeats {first} as CLIP reads it" in message and "count twice in the softmax" in message


def test_prompt_set_refuses_clip_identical_texts():
    with pytest.raises(ValueError, match=r"prompt 'A Sharp photo' repeats 'a sharp photo'"):
        PromptSet(("a sharp photo", "A Sharp photo"), ("objective", "subjective"))
