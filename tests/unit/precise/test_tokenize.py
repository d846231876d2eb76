"""Gateway tokenization: a small real Hugging Face tokenizer built here (file and directory,
chat template, plain fallback), and the words tokenizer matching the simulator's."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from inferoute.core.errors import ConfigError
from inferoute.core.request import parse_request
from inferoute.datalayer.tokenize import (HFTokenizer, TokenizerConfig, WordsTokenizer,
                                          load_tokenizer)
from inferoute.sim import tokenizer as simtok
from inferoute.sim.openai_api import parse_sim_request

WORDS = ["<s>", "</s>", "<unk>", "hello", "world", "how", "are", "you", "system", "user",
         "assistant", "be", "brief", ":", "|", "<", ">", "[", "]"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }} "
            "{% endfor %}{% if add_generation_prompt %}[assistant]:{% endif %}")


def build(tmp_path, template=TEMPLATE):
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.add_special_tokens(["<s>", "</s>"])  # matched whole, as in real tokenizers
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    if template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


def req(api, body):
    return parse_request(api, body, request_id="r1")


def test_completions_add_special_tokens_and_pass_ids(tmp_path):
    t = load_tokenizer({"path": str(build(tmp_path))})
    assert t(req("completions", {"model": "m", "prompt": "hello world"})) == [0, 3, 4]
    assert t(req("completions", {"model": "m", "prompt": [7, 8, 9]})) == [7, 8, 9]
    assert t(req("completions", {"model": "m", "prompt": ["how are", "you"]})) == [0, 5, 6]


def test_chat_uses_the_template_without_extra_specials(tmp_path):
    t = HFTokenizer(build(tmp_path))
    r = req("chat", {"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "text", "text": "world"}]}]})
    text = "<s>[system]: be brief [user]: hello\nworld [assistant]:"
    assert t.render([{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hello\nworld"}]) == text
    assert t(r) == t.encode(text, add_special_tokens=False)
    assert t(r)[0] == 0  # the BOS comes from the template, once
    resp = req("responses", {"model": "m", "input": "hello", "instructions": "be brief"})
    assert t(resp) == t.encode("<s>[system]: be brief [user]: hello [assistant]:", False)


def test_template_file_overrides_and_plain_fallback(tmp_path):
    d = build(tmp_path, template=None)
    plain = HFTokenizer(d)
    assert plain.render([{"role": "user", "content": "hi"}]) == "<|user|>\nhi\n<|assistant|>"
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert HFTokenizer(d).render([{"role": "user", "content": "hi"}]) == "hi"
    other = d / "other.jinja"
    other.write_text("X{{ messages|length }}")
    assert HFTokenizer(d / "tokenizer.json", other).render([{"role": "u", "content": ""}]) == "X1"


def test_a_template_error_gives_no_ids_not_a_crash(tmp_path):
    t = HFTokenizer(build(tmp_path, template="{{ raise_exception('no system role') }}"))
    assert t(req("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}]})) is None


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        load_tokenizer({"path": str(tmp_path)})
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(ConfigError, match="cannot load"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ConfigError, match="needs 'path'"):
        load_tokenizer({"kind": "huggingface"})
    build(tmp_path)
    with pytest.raises(ConfigError, match="chatTemplate"):
        load_tokenizer({"path": str(tmp_path), "chatTemplate": str(tmp_path / "nope.jinja")})
    with pytest.raises(ConfigError, match="does not compile"):
        HFTokenizer(build(tmp_path, template="{% for %}"))
    assert TokenizerConfig.model_validate("words").kind == "words"


@pytest.mark.parametrize("api,body", [
    ("completions", {"model": "m", "prompt": "the quick  brown\nfox jumps"}),
    ("completions", {"model": "m", "prompt": [5, 6, 7]}),
    ("chat", {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "hello there world"}]}),
])
def test_words_tokenizer_matches_the_simulator(api, body):
    sim = parse_sim_request(api, body)
    expected = sim.prompt_token_ids if sim.prompt_token_ids is not None \
        else simtok.encode(sim.prompt_text)
    assert WordsTokenizer()(req(api, body)) == expected
    assert load_tokenizer("words").name == "words"
