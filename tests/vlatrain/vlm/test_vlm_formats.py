"""Each adapter feeds its model what the model's own processor and forward would.

For one frame and one instruction, the adapter's token sequence must be the processor's
(``Kosmos2Processor``, ``LlavaProcessor``, ``PaliGemmaProcessor``; Qwen2-VL's chat format and
image processor) followed by the action token, and the language model's logits over that prompt
must equal the transformers model's own forward on the processor's output.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.vlm_helpers import make_policy, vlm_spec
from vlatrain.vlm.sequence import ACTION, IMAGE, MEDIA, TEXT

INSTRUCTION = "open the drawer"


def one_frame(tiny_dirs, name, prompt=None):
    """(backbone, observation, uint8 frame, captured layout and hidden states) of one forward."""
    spec = vlm_spec(history=1, cameras=("static",))
    kw = {"prompt": prompt} if prompt else {}
    policy, prep, spec = make_policy(tiny_dirs, name, "gpt", spec=spec, use_state=False, **kw)
    bb = policy.backbone.eval()
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    batch = {"observation.images.static": torch.from_numpy(frame)[None, None],
             "obs_mask": torch.ones(1, 1, dtype=torch.bool),
             "action": torch.zeros(1, 1, spec.chunk, 7),
             "action_mask": torch.ones(1, 1, spec.chunk, dtype=torch.bool),
             "instruction": [INSTRUCTION]}
    obs, _ = prep(batch, train=False)
    seen = {}
    run = bb.run_language_model

    def spy(embeds, layout, media):
        seen["hidden"], seen["layout"] = run(embeds, layout, media), layout
        seen["embeds"] = embeds
        return seen["hidden"]

    bb.run_language_model = spy
    with torch.no_grad():
        bb(obs)
    return bb, obs, frame, seen


def check_layout(seen, ids, image_positions):
    """Our sequence = the reference ``ids`` (images where ``image_positions``) + [ACTION]."""
    lay = seen["layout"]
    n = len(ids)
    kind = lay.kind[0]
    assert kind.shape[0] == n + 1 and int(kind[n]) == ACTION
    assert torch.equal(kind[:n] == IMAGE, torch.as_tensor(image_positions, dtype=torch.bool))
    text = kind[:n] == TEXT
    assert torch.equal(lay.ids[0, :n][text], torch.as_tensor(ids)[text])


def our_logits(bb, seen, n):
    with torch.no_grad():
        return bb.output_embeddings()(seen["hidden"][0, :n])


def test_kosmos2_matches_its_processor_and_forward(tiny_dirs):
    from transformers import AutoProcessor
    bb, obs, frame, seen = one_frame(tiny_dirs, "kosmos2")
    proc = AutoProcessor.from_pretrained(tiny_dirs["kosmos2"], local_files_only=True)
    ref = proc(text="<grounding>An image of a robot " + INSTRUCTION, images=Image.fromarray(frame),
               num_image_tokens=bb.n_image_tokens, return_tensors="pt")
    ids, img = ref["input_ids"][0], ref["image_embeds_position_mask"][0].bool()
    check_layout(seen, ids, img)
    px = obs.images["static"][:, 0]
    with torch.no_grad():
        want = bb.model(pixel_values=px, input_ids=ids[None], image_embeds_position_mask=img[None],
                        attention_mask=torch.ones_like(ids)[None]).logits[0]
    assert torch.allclose(our_logits(bb, seen, len(ids)), want, atol=1e-5)


def test_llava_matches_its_processor_and_forward(tiny_dirs):
    from transformers import AutoProcessor
    bb, obs, frame, seen = one_frame(tiny_dirs, "llava")
    proc = AutoProcessor.from_pretrained(tiny_dirs["llava"], local_files_only=True)
    text = f"USER: <image>\nWhat action should the robot take to {INSTRUCTION}? ASSISTANT:"
    ref = proc(text=text, images=Image.fromarray(frame), return_tensors="pt")
    ids = ref["input_ids"][0]
    check_layout(seen, ids, ids == bb.model.config.image_token_id)
    with torch.no_grad():
        want = bb.model(input_ids=ids[None], pixel_values=obs.images["static"][:, 0]).logits[0]
    assert torch.allclose(our_logits(bb, seen, len(ids)), want, atol=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # transformers'
def test_paligemma_matches_its_processor_and_prefix_lm_forward(tiny_dirs):
    from transformers import AutoProcessor
    bb, obs, frame, seen = one_frame(tiny_dirs, "paligemma")
    proc = AutoProcessor.from_pretrained(tiny_dirs["paligemma"], local_files_only=True)
    ref = proc(text=f"<image>What action should the robot take to {INSTRUCTION}?",
               images=Image.fromarray(frame), return_tensors="pt")
    ids = ref["input_ids"][0]
    check_layout(seen, ids, ids == bb.model.config.image_token_id)
    assert bool(seen["layout"].prefix[0, :len(ids)].all()) and not bool(seen["layout"].prefix[0, -1])
    with torch.no_grad():  # the whole prompt is the bidirectional prefix (token type 0)
        want = bb.model(input_ids=ids[None], pixel_values=obs.images["static"][:, 0],
                        token_type_ids=torch.zeros_like(ids)[None]).logits[0]
    assert torch.allclose(our_logits(bb, seen, len(ids)), want, atol=1e-5)


def test_qwen2vl_matches_its_image_processor_rope_and_forward(tiny_dirs):
    from transformers import Qwen2VLImageProcessor
    bb, obs, frame, seen = one_frame(tiny_dirs, "qwen2vl")
    images = Qwen2VLImageProcessor.from_pretrained(tiny_dirs["qwen2vl"], local_files_only=True)
    ref = images(images=[Image.fromarray(frame)], return_tensors="pt")
    px, grid = ref["pixel_values"], ref["image_grid_thw"]
    assert grid.tolist() == [[1, bb.grid, bb.grid]]
    ours = bb.patchify(obs.images["static"][:, 0])
    assert torch.allclose(ours, px, atol=1e-4)  # same flat patch layout, same normalisation
    tok = bb.tokenizer
    n_img = int(grid.prod()) // bb.merge ** 2
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|>" + "<|image_pad|>" * n_img + "<|vision_end|>What action should the "
            f"robot take to {INSTRUCTION}?<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    image = ids == bb.model.config.image_token_id
    check_layout(seen, ids, image)
    mm = image.long()[None]
    want_pos, _ = bb.model.model.get_rope_index(ids[None], mm_token_type_ids=mm, image_grid_thw=grid)
    assert torch.equal(bb.mrope_positions(seen["layout"])[:, :, :len(ids)], want_pos)
    with torch.no_grad():
        want = bb.model(input_ids=ids[None], pixel_values=px, image_grid_thw=grid,
                        mm_token_type_ids=mm).logits[0]
    assert torch.allclose(our_logits(bb, seen, len(ids)), want, atol=1e-5)


def test_flamingo_cross_attention_starts_closed(tiny_dirs):
    """Gates at 0: the LM computes what it computed before; frames matter once they open."""
    from transformers import AutoModelForCausalLM
    bb, obs, frame, seen = one_frame(tiny_dirs, "flamingo")
    lay = seen["layout"]
    ids = bb.tokenizer(INSTRUCTION)["input_ids"]  # <s> open the drawer
    assert lay.kind[0].tolist() == [TEXT, MEDIA, TEXT, TEXT, TEXT, ACTION]
    assert lay.ids[0, [0, 2, 3, 4]].tolist() == ids
    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs["flamingo"] / "lm", local_files_only=True)
    with torch.no_grad():
        want = plain.model(inputs_embeds=seen["embeds"]).last_hidden_state
        assert torch.allclose(seen["hidden"], want, atol=1e-6)
        base = bb(obs).features
        obs.images["static"] = torch.randn_like(obs.images["static"])
        assert torch.equal(bb(obs).features, base)
        for layer in bb.flamingo_layers:
            layer.xattn.attn_gate.data.fill_(1.0)
        assert not torch.allclose(bb(obs).features, base)


@pytest.mark.parametrize("name", ["kosmos2", "qwen2vl"])
def test_a_custom_prompt_replaces_the_default(tiny_dirs, name):
    bb, _, _, seen = one_frame(tiny_dirs, name, prompt="{image} robot : {instruction}")
    lay = seen["layout"]
    text = lay.ids[0][lay.kind[0] == TEXT].tolist()
    want = bb.tokenizer(f"robot : {INSTRUCTION}", add_special_tokens=False)["input_ids"]
    assert text[-len(want):] == want
    assert int(lay.kind[0, -1]) == ACTION
