"""vlatrain/vlm/sequence.py + interleaved.py: prompts, per-step and interleaved layouts."""

import pytest
import torch

from vlatrain.vlm.interleaved import interleaved_rows
from vlatrain.vlm.sequence import (ACTION, IMAGE, SLOT, STATE, TEXT, Layout, Piece, Prompt,
                                   step_rows)


def metaspace_tokenizer():
    """A tokenizer like Llama's: words get '▁' only at the start of the whole text, so the ids
    of a piece depend on what precedes it (tokenizing the sides separately would differ)."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Metaspace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    words = ["<unk>", "<s>", "<image>", "▁user", "user", "▁:", ":", "▁open", "open", "▁the",
             "the", "▁drawer", "drawer", "▁go", "go"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Metaspace(replacement="▁", prepend_scheme="first")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "<image>")])
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>",
                                   additional_special_tokens=["<image>"])


def test_prompt_ids_are_the_whole_texts_split_at_the_image_token():
    tok = metaspace_tokenizer()
    prompt = Prompt("user :{image}{instruction} go", tok, image_token="<image>",
                    add_special_tokens=True)
    before, after = prompt.ids("open  the\tdrawer")
    whole = tok("user :<image>open the drawer go")["input_ids"]  # what a processor feeds
    i = whole.index(tok.convert_tokens_to_ids("<image>"))
    assert (list(before), list(after)) == (whole[:i], whole[i + 1:])
    assert tok.convert_ids_to_tokens(list(before)) == ["<s>", "▁user", "▁:"]
    assert tok.convert_ids_to_tokens(list(after)) == ["open", "▁the", "▁drawer", "▁go"]
    assert prompt.ids("open  the\tdrawer") is prompt.ids("open  the\tdrawer")  # cached
    with pytest.raises(ValueError, match="contains the model's image token"):
        prompt.ids("open <image> drawer")
    with pytest.raises(ValueError, match="has no '<img>' token"):
        Prompt("{image}", tok, image_token="<img>")
    with pytest.raises(ValueError, match="exactly once"):
        Prompt("{image} and {image}", tok)


def test_prompt_without_an_image_token_tokenizes_each_side():
    tok = metaspace_tokenizer()
    before, after = Prompt("{bos}{image}{instruction}", tok).ids("open the drawer")
    assert tok.convert_ids_to_tokens(list(before)) == ["<s>"]
    assert tok.convert_ids_to_tokens(list(after)) == ["▁open", "▁the", "▁drawer"]


class FakePrompt:
    def ids(self, instruction):
        return (1, 2), (len(instruction),)


def two_image_tokens(frames, step):
    return [Piece(IMAGE, 2, ref=f) for f in frames]


def kinds(row):
    return [p.kind for p in row]


def test_step_rows_put_every_step_in_its_own_sequence():
    steps = torch.tensor([[0, 0], [0, 1], [1, 1]])
    rows = step_rows(steps, ["ab", "abc"], 2, FakePrompt(), two_image_tokens, True, 6)
    assert len(rows) == 3
    assert kinds(rows[2]) == [TEXT, IMAGE, IMAGE, TEXT, STATE, ACTION, SLOT]
    assert [p.ref for p in rows[2][1:3]] == [4, 5]  # frames of step 2: 2*cams + c
    assert rows[2][3].ids == (3,) and rows[2][-1].length == 6
    assert all(p.prefix for p in rows[0][:4]) and not any(p.prefix for p in rows[0][4:])


def test_interleaved_rows_hold_the_prompt_once_and_skip_missing_steps():
    steps = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 2]])  # sample 1: steps 0, 1 do not exist
    rows = interleaved_rows(steps, 2, ["ab", "abc"], 1, FakePrompt(), two_image_tokens, False, 0)
    assert kinds(rows[0]) == [TEXT, IMAGE, TEXT, ACTION, IMAGE, ACTION, IMAGE, ACTION]
    assert [p.ref for p in rows[0] if p.kind == ACTION] == [0, 1, 2]
    assert kinds(rows[1]) == [TEXT, IMAGE, TEXT, ACTION] and rows[1][-1].ref == 3
    with pytest.raises(ValueError, match="no existing history step"):
        interleaved_rows(steps[:3], 2, ["a", "b"], 1, FakePrompt(), two_image_tokens, False, 0)


def test_layout_packs_sequences_right_padded():
    rows = [[Piece(TEXT, 2, (7, 8), prefix=True), Piece(IMAGE, 3, ref=5), Piece(ACTION, 1, ref=0)],
            [Piece(TEXT, 1, (9,)), Piece(ACTION, 1, ref=1)]]
    lay = Layout.build(rows, placeholder=0)
    assert lay.ids.tolist() == [[7, 8, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]]
    assert lay.kind.tolist() == [[TEXT, TEXT, IMAGE, IMAGE, IMAGE, ACTION],
                                 [TEXT, ACTION, TEXT, TEXT, TEXT, TEXT]]
    assert lay.ref[0].tolist() == [-1, -1, 5, 5, 5, 0] and lay.sub[0, 2:5].tolist() == [0, 1, 2]
    assert lay.mask.tolist() == [[True] * 6, [True, True] + [False] * 4]
    assert lay.prefix[0].tolist() == [True, True, False, False, False, False]
    r, c = lay.where(ACTION)
    assert (r.tolist(), c.tolist()) == ([0, 1], [5, 1])
