"""Grounding tokens: new rows on a frozen host table; the host's own keys still load."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from sparrow_plugin.hosts.added_tokens import AddedTokenEmbedding, AddedTokenHead, add_tokens_to_llm
from sparrow_plugin.hosts.tiny import TinyVideoLLM, build_word_tokenizer

WORDS = ["the red circle moving left", "the two blue squares", "the green star above the yellow triangle"]


def _llm(vocab, tie=False, padded_to=None):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=padded_to or vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )
    return Qwen2ForCausalLM(config)


def test_word_tokenizer_round_trip(tmp_path):
    tokenizer = build_word_tokenizer(WORDS)
    ids = tokenizer("the red circle moving left").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "red", "circle", "moving", "left"]
    assert tokenizer("the purple hexagon").input_ids[-1] == tokenizer.unk_token_id
    tokenizer.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded("the two blue squares").input_ids == tokenizer("the two blue squares").input_ids
    assert loaded.decode(ids) == "the red circle moving left"


def test_added_rows_start_at_the_mean_and_alone_train():
    tokenizer = build_word_tokenizer(WORDS)
    llm = _llm(len(tokenizer))
    original = llm.get_input_embeddings().weight.detach().clone()
    ids, new = add_tokens_to_llm(llm, tokenizer, ["[BOX]", "[SEG]", "<TSF>"])
    assert new == [ids["[BOX]"], ids["[SEG]"], ids["<TSF>"]] == list(range(len(original), len(original) + 3))
    embedding, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    assert isinstance(embedding, AddedTokenEmbedding) and isinstance(head, AddedTokenHead)
    assert torch.allclose(embedding.added_rows, original.mean(0).expand(3, -1))
    assert not embedding.weight.requires_grad and not head.weight.requires_grad  # the host's tables stay frozen
    assert embedding.added_rows.requires_grad and head.added_rows.requires_grad
    # new ids read the new rows, old ids the host table
    seg = torch.tensor([[ids["[SEG]"], 3]])
    out = embedding(seg)
    assert torch.equal(out[0, 0], embedding.added_rows[1]) and torch.equal(out[0, 1], original[3])
    # logits grow by the new ids, old logits unchanged
    logits = llm(input_ids=torch.tensor([[3, 4]])).logits
    assert logits.shape[-1] == len(original) + 3 and llm.config.vocab_size == len(original) + 3


def test_host_checkpoint_still_loads_strictly():
    tokenizer = build_word_tokenizer(WORDS)
    llm = _llm(len(tokenizer))
    host_state = {k: v.clone() for k, v in llm.state_dict().items()}  # the release's own keys
    add_tokens_to_llm(llm, tokenizer, ["[SEG]"])
    rows = llm.get_input_embeddings().added_rows.detach().clone()
    missing, unexpected = llm.load_state_dict(host_state, strict=True)
    assert not missing and not unexpected
    assert torch.equal(llm.get_input_embeddings().added_rows, rows)  # new rows kept


def test_known_token_keeps_its_trained_row():
    tokenizer = build_word_tokenizer(WORDS)
    tokenizer.add_tokens(["[SEG]"])  # a release that was trained with [SEG]
    llm = _llm(len(tokenizer))
    ids, new = add_tokens_to_llm(llm, tokenizer, ["[SEG]", "[BOX]"])
    assert ids["[SEG]"] == tokenizer.convert_tokens_to_ids("[SEG]") and new == [ids["[BOX]"]]


def test_ids_inside_a_padded_table_and_tied_heads():
    tokenizer = build_word_tokenizer(WORDS)
    llm = _llm(len(tokenizer), tie=True, padded_to=len(tokenizer) + 8)  # Qwen-style spare rows
    ids, new = add_tokens_to_llm(llm, tokenizer, ["[SEG]"])
    head, embedding = llm.get_output_embeddings(), llm.get_input_embeddings()
    assert ids["[SEG]"] < embedding.num_embeddings  # inside the padded table
    assert head.total_vocab == embedding.num_embeddings
    hidden = torch.randn(2, 32)
    logits = head(hidden)
    assert torch.allclose(logits[:, ids["[SEG]"]], hidden @ embedding.added_rows[0])
    assert "added_rows" not in dict(head.named_parameters(recurse=False))  # tied: one set of rows


def test_tiny_host_save_and_load(tmp_path):
    host = TinyVideoLLM.create(WORDS)
    host.save_pretrained(tmp_path)
    loaded = TinyVideoLLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(host.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.tokenizer.get_vocab() == host.tokenizer.get_vocab()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(Exception, match="host weights not found"):
        TinyVideoLLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("tie", [False, True])
def test_adding_tokens_twice_grows_the_rows(tie):
    tokenizer = build_word_tokenizer(WORDS)
    llm = _llm(len(tokenizer), tie=tie)
    first, _ = add_tokens_to_llm(llm, tokenizer, ["[SEG]"])
    ids, new = add_tokens_to_llm(llm, tokenizer, ["[SEG]", "[BOX]"])
    assert ids["[SEG]"] == first["[SEG]"] and new == [ids["[BOX]"]]
    embedding = llm.get_input_embeddings()
    assert embedding.added_ids.tolist() == [ids["[SEG]"], ids["[BOX]"]] and embedding.added_rows.shape[0] == 2
    logits = llm(input_ids=torch.tensor([[ids["[BOX]"], ids["[SEG]"]]])).logits
    assert logits.shape[-1] == ids["[BOX]"] + 1
