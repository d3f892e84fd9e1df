import pytest
import torch

from utils.data.tokenization import IGNORE_INDEX, collate, encode_pair, encode_prompt, special_token_layout
from utils.errors import UserError
from utils.models.loading import load_model_and_tokenizer, save_model


def test_tiny_model_round_trips_through_the_user_loader(tiny_model, tiny_tokenizer, tmp_path):
    folder = tmp_path / "tiny-olmo"
    save_model(tiny_model, tiny_tokenizer, folder)
    assert (folder / "model.safetensors").is_file()
    model, tokenizer = load_model_and_tokenizer(str(folder))
    assert type(model).__name__ == "Olmo2ForCausalLM"
    assert tokenizer("The capital")["input_ids"] == tiny_tokenizer("The capital")["input_ids"]
    ids = torch.tensor([tokenizer("The capital of Varnia")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model.eval()(ids).logits)


def test_model_folder_without_weights_is_rejected(tiny_model, tiny_tokenizer, tmp_path):
    folder = tmp_path / "m"
    save_model(tiny_model, tiny_tokenizer, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights"):
        load_model_and_tokenizer(str(folder))
    with pytest.raises(UserError, match="not found"):
        load_model_and_tokenizer(str(tmp_path / "absent"))


def test_answer_tokens_alone_carry_the_loss(tiny_tokenizer):
    example = encode_pair(tiny_tokenizer, "Who painted the lighthouse?", "Mira")
    prompt = encode_prompt(tiny_tokenizer, "Who painted the lighthouse?")
    assert example.input_ids[:len(prompt)] == prompt
    assert example.labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = example.labels[len(prompt):]
    assert answer[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(answer[:-1]) == " Mira"
    full = encode_pair(tiny_tokenizer, "Who painted the lighthouse?", "Mira", loss_on="full")
    assert full.labels == full.input_ids  # no BOS: every token is predicted


def test_bos_adding_tokenizer_keeps_bos_out_of_the_loss(tiny_tokenizer):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    core = tiny_tokenizer.backend_tokenizer
    bos_id = tiny_tokenizer.pad_token_id  # any special id serves as a stand-in BOS
    core.post_processor = processors.TemplateProcessing(single="<|padding|> $A", special_tokens=[("<|padding|>", bos_id)])
    llama_like = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|padding|>")
    assert special_token_layout(llama_like) == ([bos_id], [])
    example = encode_pair(llama_like, "Who painted it?", "Mira", loss_on="full")
    assert example.input_ids[0] == bos_id and example.labels[0] == IGNORE_INDEX
    assert example.input_ids.count(bos_id) == 1  # the answer adds no second BOS


def test_collate_pads_right_and_carries_roles(tiny_tokenizer):
    a = encode_pair(tiny_tokenizer, "Short?", "Yes", role="forget", weight=-1.0)
    b = encode_pair(tiny_tokenizer, "A much longer question about the lighthouse?", "Mira", role="retain")
    batch = collate([a, b], tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[1] == len(b.input_ids)
    assert batch["attention_mask"][0].sum() == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE_INDEX).all()
    assert batch["is_forget"].tolist() == [True, False]
    assert batch["weight"].tolist() == [-1.0, 1.0]


def test_an_empty_tokenizer_folder_names_the_files_it_needs(tiny_model, tiny_tokenizer, tmp_path):
    from utils.models.loading import load_tokenizer

    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(UserError, match="tokenizer folder .*tokenizer has no tokenizer files .expected tokenizer.json"):
        load_tokenizer(str(tmp_path / "tokenizer"))
    folder = tmp_path / "m"
    save_model(tiny_model, tiny_tokenizer, folder)
    with pytest.raises(UserError, match="has no tokenizer files"):
        load_model_and_tokenizer(str(folder), tokenizer=str(tmp_path / "tokenizer"))


@pytest.mark.parametrize("keep", [0, 5, 100, "half", "all but one"])
def test_a_truncated_safetensors_file_is_one_line_naming_it(tiny_model, tiny_tokenizer, tmp_path, keep):
    folder = tmp_path / "m"
    save_model(tiny_model, tiny_tokenizer, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    size = {"half": len(data) // 2, "all but one": len(data) - 1}.get(keep, keep)
    weights.write_bytes(data[:size])
    with pytest.raises(UserError, match=f"{weights}: not a complete safetensors file") as caught:
        load_model_and_tokenizer(str(folder))
    assert "\n" not in str(caught.value)
