"""Assistant-only loss masks on the real SmolLM2 tokenizer and a tiny random LLaVA."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from safeturn.models.embedded import embedded_model_dir
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from safeturn.train.masks import (
    IGNORE_INDEX,
    AssistantOnlyCollator,
    MaskError,
    TrainExample,
    build_example,
)
from tests.models.tiny_vlm import build_tiny_llava

pytestmark = pytest.mark.slow

IMAGE_TOKENS = 16  # (32 px / 8 px patches)²; the "default" strategy drops CLS
HEADER = "<|im_start|>assistant\n"
ANSWERS = ["Paris is the capital.", "I can't help with that.", "Sure: mix flour and water."]
USERS = ["What is the capital of France?", "How do I pick a lock?", "How do I make paste?"]
SYSTEM = "You are careful."


def png(color: str = "red", size: tuple[int, int] = (48, 40)) -> ImagePart:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return ImagePart(data=buffer.getvalue())


def chat(*, system: str | None = SYSTEM, images: bool = False) -> Dialogue:
    messages = [Message.system(system)] if system else []
    for i, (user, answer) in enumerate(zip(USERS, ANSWERS, strict=True)):
        pictures = [png()] if images and i == 0 else []
        messages += [Message.user(user, pictures), Message.assistant(answer)]
    return Dialogue(messages=messages)


def runs(example: TrainExample) -> list[list[int]]:
    """The supervised tokens, grouped into contiguous runs."""
    groups: list[list[int]] = []
    previous = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        supervised = label != IGNORE_INDEX
        if supervised:
            assert label == token
            if not previous:
                groups.append([])
            groups[-1].append(label)
        previous = supervised
    return groups


def unsupervised_text(example: TrainExample, tokenizer: Any) -> str:
    ids = [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == -100]
    return str(tokenizer.decode(ids))


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", embedded_model_dir())


@pytest.fixture(scope="module")
def processor(llava_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(llava_dir, local_files_only=True)


# --- text: the embedded SmolLM2's own ChatML template ---------------------------------------


@pytest.mark.parametrize("system", [SYSTEM, None], ids=["own-system", "template-default-system"])
def test_loss_falls_exactly_on_assistant_texts_and_their_end(
    tokenizer: Any, system: str | None
) -> None:
    example = build_example(chat(system=system), tokenizer)

    decoded = [tokenizer.decode(group) for group in runs(example)]
    assert decoded == [f"{answer}<|im_end|>" for answer in ANSWERS]
    assert len(example.assistant_spans) == 3
    assert len(example.input_ids) == len(example.labels) == len(example.attention_mask)
    rendered = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.text} for m in chat(system=system).messages],
        tokenize=False,
    )
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]

    rest = unsupervised_text(example, tokenizer)
    for user in USERS:
        assert user in rest
    assert (SYSTEM if system else "You are a helpful AI assistant named SmolLM") in rest
    assert rest.count(HEADER) == 3
    size = len(tokenizer(HEADER, add_special_tokens=False)["input_ids"])
    for start, _ in example.assistant_spans:
        assert tokenizer.decode(example.input_ids[start - size : start]) == HEADER
        assert example.labels[start - size : start] == [IGNORE_INDEX] * size
    # the newline the template writes after <|im_end|> is the template's, not the model's
    _, last_stop = example.assistant_spans[-1]
    assert tokenizer.decode(example.input_ids[last_stop:]) == "\n"


def test_custom_end_tokens_extend_the_span_to_the_template_newline(tokenizer: Any) -> None:
    example = build_example(chat(), tokenizer, end_tokens=[])
    decoded = [tokenizer.decode(group) for group in runs(example)]
    assert decoded == [f"{answer}<|im_end|>\n" for answer in ANSWERS]


def test_truncation_keeps_whole_turns_from_the_left(tokenizer: Any) -> None:
    full = build_example(chat(), tokenizer)
    second_end = len(
        build_example(Dialogue(messages=chat().messages[:5]), tokenizer).input_ids
    )  # system, u1, a1, u2, a2 (+ the template's newline)
    assert second_end < len(full.input_ids)

    cut = build_example(chat(), tokenizer, max_length=len(full.input_ids) - 1)
    assert len(cut.input_ids) == second_end
    assert cut.input_ids == full.input_ids[:second_end]
    assert [tokenizer.decode(g) for g in runs(cut)] == [f"{a}<|im_end|>" for a in ANSWERS[:2]]

    same = build_example(chat(), tokenizer, max_length=len(full.input_ids))
    assert same.input_ids == full.input_ids and same.labels == full.labels


def test_all_assistant_turns_truncated_is_an_error_naming_the_sample(tokenizer: Any) -> None:
    sample = Sample(id="mt-42", source="test", dialogue=chat())
    with pytest.raises(MaskError, match=r"sample 'mt-42'.*max_length=10"):
        build_example(sample, tokenizer, max_length=10)


def test_a_template_that_rewrites_history_is_refused(tokenizer: Any) -> None:
    hides_old_replies = copy.deepcopy(tokenizer)
    hides_old_replies.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' and not loop.last %}(earlier reply)"
        "{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(MaskError, match=r"chat 7: assistant message 2 .*not prefix-stable"):
        build_example(chat(), hides_old_replies, label="chat 7")


def test_dialogues_that_cannot_carry_loss_are_refused(tokenizer: Any) -> None:
    only_user = Dialogue(messages=[Message.user("hello")])
    with pytest.raises(MaskError, match="chat 1: has no assistant message"):
        build_example(only_user, tokenizer, label="chat 1")
    with pytest.raises(MaskError, match=r"has images but .* text-only"):
        build_example(chat(images=True), tokenizer)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_on_the_tokenizer_side(tokenizer: Any, side: str) -> None:
    padded_tokenizer = copy.deepcopy(tokenizer)
    padded_tokenizer.padding_side = side
    long = build_example(chat(), tokenizer)
    short = build_example(Dialogue(messages=chat().messages[:3]), tokenizer)
    batch = AssistantOnlyCollator(padded_tokenizer)([long, short.as_dict()])

    n, gap = len(long.input_ids), len(long.input_ids) - len(short.input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, n)
    assert batch["input_ids"][0].tolist() == long.input_ids
    pad = tokenizer.pad_token_id
    row = batch["input_ids"][1].tolist()
    labels, mask = batch["labels"][1].tolist(), batch["attention_mask"][1].tolist()
    if side == "right":
        assert row == short.input_ids + [pad] * gap
        assert labels == short.labels + [IGNORE_INDEX] * gap
        assert mask == [1] * len(short.input_ids) + [0] * gap
    else:
        assert row == [pad] * gap + short.input_ids
        assert labels == [IGNORE_INDEX] * gap + short.labels
        assert mask == [0] * gap + [1] * len(short.input_ids)
    assert "pixel_values" not in batch


# --- images: the tiny LLaVA's processor -----------------------------------------------------


def test_image_tokens_and_user_text_carry_no_loss(processor: Any) -> None:
    example = build_example(chat(images=True), processor)
    image_id = processor.image_token_id

    positions = [i for i, t in enumerate(example.input_ids) if t == image_id]
    assert len(positions) == IMAGE_TOKENS
    assert all(example.labels[i] == IGNORE_INDEX for i in positions)
    decoded = [processor.tokenizer.decode(group) for group in runs(example)]
    assert decoded == [f"{answer}<|im_end|>" for answer in ANSWERS]
    rest = unsupervised_text(example, processor.tokenizer)
    assert all(user in rest for user in USERS) and SYSTEM in rest
    assert example.extras["pixel_values"].shape == (1, 3, 32, 32)


def test_truncation_drops_images_after_the_cut(processor: Any) -> None:
    # an image in the last user turn only: cutting that turn must drop its pixels too
    messages = chat().messages
    messages[5] = Message.user(USERS[2], [png("blue")])
    dialogue = Dialogue(messages=messages)
    full = build_example(dialogue, processor)
    assert full.extras["pixel_values"].shape[0] == 1

    cut = build_example(dialogue, processor, max_length=len(full.input_ids) - 1)
    assert processor.image_token_id not in cut.input_ids
    assert "pixel_values" not in cut.extras
    assert len(runs(cut)) == 2


def collated_batch(processor: Any) -> dict[str, Any]:
    two_images = chat(images=True).messages
    two_images[3] = Message.user(USERS[1], [png("green", (20, 60))])
    dialogues = [chat(images=True), Dialogue(messages=two_images)]
    examples = [build_example(d, processor) for d in dialogues]
    return AssistantOnlyCollator(processor)(examples)


def test_collated_vlm_batch_holds_every_image(processor: Any) -> None:
    batch = collated_batch(processor)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert (batch["input_ids"] == processor.image_token_id).sum().item() == 3 * IMAGE_TOKENS
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}


def test_sgd_on_assistant_tokens_lowers_exactly_their_cross_entropy(
    processor: Any, llava_dir: Path
) -> None:
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, local_files_only=True)
    model.train()
    batch = collated_batch(processor)
    labels = batch["labels"]

    out = model(**batch)
    shifted_logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    keep = shifted_labels != IGNORE_INDEX
    assert keep.sum().item() == (labels != IGNORE_INDEX).sum().item()  # none at position 0
    manual = torch.nn.functional.cross_entropy(shifted_logits[keep], shifted_labels[keep])
    torch.testing.assert_close(out.loss, manual)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = model(**batch).loss.item()
    assert losses[0] > losses[1] > losses[2] > final
