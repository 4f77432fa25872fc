"""Prompt sets: defaults, the two file formats, subsets and error messages."""

from __future__ import annotations

import json

import pytest

from clifvqa.extract.prompts import DEFAULT_TEMPLATE, PromptFileError, PromptSet, default_prompts, load_prompts


def test_default_prompts_are_final_strings_objective_first():
    p = default_prompts()
    assert p.template == DEFAULT_TEMPLATE == "a photo that looks {}."
    assert len(p) == 22
    assert p.groups.count("objective") == 12 and p.groups.count("subjective") == 10
    assert p.groups == tuple(sorted(p.groups))  # objective block, then subjective block
    assert p.texts[0] == "a photo that looks bright."
    assert "a photo that looks high contrast." in p.texts
    assert p.texts[p.groups.index("subjective")] == "a photo that looks interesting."
    for word in ("blurry", "noisy", "colorful", "boring", "pleasant", "depressing", "fearful"):
        assert f"a photo that looks {word}." in p.texts


def test_subset_and_group_indices():
    p = PromptSet(("s1", "o1", "s2", "o2"), ("subjective", "objective", "subjective", "objective"))
    assert p.subset("objective") == PromptSet(("o1", "o2"), ("objective", "objective"))
    assert p.subset("subjective").texts == ("s1", "s2")
    assert p.group_indices() == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match="unknown prompt group"):
        p.subset("aesthetic")
    with pytest.raises(ValueError, match="no subjective"):
        PromptSet(("a",), ("objective",)).subset("subjective")


def test_prompt_set_validation():
    with pytest.raises(ValueError, match="repeats"):
        PromptSet(("a", "a"), ("objective", "objective"))
    with pytest.raises(ValueError, match="group"):
        PromptSet(("a",), ("objectiv",))
    with pytest.raises(ValueError, match="at least one"):
        PromptSet((), ())


def test_load_json_object(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"template": "a {} video.", "objective": ["sharp", "blurry"], "subjective": ["boring"]}))
    p = load_prompts(f)
    assert p.texts == ("a sharp video.", "a blurry video.", "a boring video.")
    assert p.groups == ("objective", "objective", "subjective")
    assert p.template == "a {} video."
    f.write_text(json.dumps({"objective": ["sharp"]}))
    assert load_prompts(f).texts == ("a photo that looks sharp.",)
    f.write_text(json.dumps({"template": "{}", "objective": ["a crisp shot"]}))
    assert load_prompts(f).texts == ("a crisp shot",)


def test_load_json_list_of_final_strings(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps([{"text": "a dull photo", "group": "objective"}, {"text": "so fun", "group": "subjective"}])
    )
    p = load_prompts(f)
    assert p.texts == ("a dull photo", "so fun") and p.template is None


def test_load_text_format_keeps_file_order(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text(
        "# my prompts\ntemplate: the video is {}\n\nobjective: sharp\nsubjective: boring\nobjective:  noisy \n"
    )
    p = load_prompts(f)
    assert p.texts == ("the video is sharp", "the video is boring", "the video is noisy")
    assert p.groups == ("objective", "subjective", "objective")


@pytest.mark.parametrize(
    "content, message",
    [
        ("objective: sharp\nfeeling: sad\n", "line 2: unknown label 'feeling'"),
        ("objective: sharp\njust words\n", "line 2: expected 'objective: WORD'"),
        ("objective: sharp\nsubjective: sharp\n", "line 2: 'sharp' repeats line 1"),
        ("objective: sharp\ntemplate: a {}\n", "line 2: the template line must come before"),
        ("template: no braces\n", "line 1: template 'no braces' must contain exactly one"),
        ("# nothing\n\n", "holds no prompts"),
        ('{"objective": ["a",\n "b",,]}', "line 2: invalid JSON"),
        ('{"objective": "sharp"}', "'objective' must be a list of strings"),
        ('{"objectives": ["sharp"]}', "unknown keys ['objectives']"),
        ('[{"text": "x"}]', "item 0 must be an object with exactly 'text' and 'group'"),
        ('[{"text": "x", "group": "aesthetic"}]', "group 'aesthetic'"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_text(content)
    with pytest.raises(PromptFileError) as info:
        load_prompts(f)
    assert message in str(info.value)
    assert str(f) in str(info.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read prompt file"):
        load_prompts(tmp_path / "nope.json")
