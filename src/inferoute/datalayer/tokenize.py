"""Gateway-side tokenization for precise prefix scoring: request -> the token ids the server caches.

Configured per pool (`tokenizer:` in the serving config); nothing is ever downloaded:

- `words`: one token per whitespace-separated word, exactly as `inferoute sim` tokenizes (for
  the simulator, tests and benchmarks);
- `{path: DIR_OR_FILE}`: a Hugging Face tokenizer, read with the `tokenizers` library from a
  local `tokenizer.json` or a directory holding one (plus `tokenizer_config.json`, whose
  `chat_template`, `bos_token`, `eos_token` are used; a `chat_template.jinja` file in the
  directory, or `chatTemplate: FILE`, overrides the template).

Completions prompts are encoded with the tokenizer's special tokens (as vLLM does for
/v1/completions); a prompt given as token ids is used as is; for a list of prompts the first is
used. Chat conversations (and /v1/responses input) are rendered with the chat template in a
sandboxed jinja2 environment (`add_generation_prompt=True`, text content parts joined by newlines,
as vLLM does) and encoded without extra special tokens. When there is no template, the
conversation is rendered plainly: `<|role|>\\ncontent\\n` per message then
`<|assistant|>`, the text `inferoute sim` renders (a real vLLM server refuses chat requests
without a template, so this only matters for the simulator).

A request that cannot be tokenized (a template error) is logged and scored without token ids.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import jinja2
import pydantic
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..core.errors import ConfigError
from ..core.request import InferenceRequest

log = logging.getLogger("inferoute.tokenize")

#: appended to a plainly rendered conversation (as `inferoute sim` does)
PLAIN_GENERATION_PROMPT = "<|assistant|>"


class RequestTokenizer(Protocol):
    name: str

    def __call__(self, request: InferenceRequest) -> list[int] | None:
        """The request's prompt token ids, or None when they cannot be computed."""
        ...


class TokenizerConfig(pydantic.BaseModel):
    """A pool's `tokenizer:` block (or the string `words`, or a path)."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    kind: str = pydantic.Field("huggingface", pattern="^(huggingface|words)$")
    path: str | None = None
    chat_template: str | None = pydantic.Field(None, alias="chatTemplate")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"kind": "words"} if data == "words" else {"path": data}
        return data

    @pydantic.model_validator(mode="after")
    def _needs_path(self) -> "TokenizerConfig":
        if self.kind == "huggingface" and not self.path:
            raise ValueError("a huggingface tokenizer needs 'path' (tokenizer.json or its "
                             "directory); use 'words' for the simulator's tokenizer")
        return self


# -- prompt pieces ------------------------------------------------------------------------------

def _first_prompt(prompt: Any) -> str | list[int] | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        head = prompt[0]
        if isinstance(head, str):
            return head
        if isinstance(head, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                          for t in head):
            return list(head)
    return None


def _text_content(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def chat_messages(request: InferenceRequest) -> list[dict[str, Any]] | None:
    """The conversation of a chat or responses request, content flattened to text."""
    body = request.body
    if request.api == "chat":
        raw = body.get("messages")
    elif request.api == "responses":
        inp = body.get("input")
        raw = [{"role": "user", "content": inp}] if isinstance(inp, str) else inp
        instr = body.get("instructions")
        if isinstance(instr, str) and instr and isinstance(raw, list):
            raw = [{"role": "system", "content": instr}, *raw]
    else:
        return None
    if not isinstance(raw, list):
        return None
    out = []
    for m in raw:
        if isinstance(m, dict):
            msg = dict(m)
            msg["content"] = _text_content(m.get("content"))
            msg.setdefault("role", "user")
            out.append(msg)
    return out


# -- the words tokenizer ------------------------------------------------------------------------

class WordsTokenizer:
    """`inferoute sim`'s tokenizer: one id per whitespace-separated word."""

    name = "words"

    def __init__(self) -> None:
        from ..core.words import encode

        self._encode: Callable[[str], list[int]] = encode

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def __call__(self, request: InferenceRequest) -> list[int] | None:
        if request.api == "completions":
            prompt = _first_prompt(request.body.get("prompt"))
            if prompt is None:
                return None
            return prompt if isinstance(prompt, list) else self._encode(prompt)
        return self._encode(request.prefix_text + PLAIN_GENERATION_PROMPT)


# -- Hugging Face tokenizers --------------------------------------------------------------------

def _special(v: Any) -> str:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else ""


def _compile_template(source: str) -> Callable[..., str]:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    # as transformers renders templates: plain JSON, not jinja2's HTML-escaped tojson
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent,
                                                              ensure_ascii=False)
    try:
        return env.from_string(source).render
    except jinja2.TemplateError as exc:
        raise ConfigError(f"tokenizer: the chat template does not compile: {exc}") from None


class HFTokenizer:
    """A local Hugging Face tokenizer (tokenizer.json) with its chat template."""

    def __init__(self, path: str | Path, chat_template: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            directory, file = p, p / "tokenizer.json"
        else:
            directory, file = p.parent, p
        if not file.is_file():
            raise ConfigError(f"tokenizer: no tokenizer.json at {file}")
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise ConfigError(f"tokenizer: cannot load {file}: {exc}") from None
        self.name = str(p)
        cfg: dict[str, Any] = {}
        cfg_file = directory / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"tokenizer: cannot read {cfg_file}: {exc}") from None
        self.bos_token = _special(cfg.get("bos_token"))
        self.eos_token = _special(cfg.get("eos_token"))
        source: Any = cfg.get("chat_template")
        if isinstance(source, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        jinja_file = Path(chat_template) if chat_template else directory / "chat_template.jinja"
        if chat_template and not jinja_file.is_file():
            raise ConfigError(f"tokenizer: chatTemplate {jinja_file} does not exist")
        if jinja_file.is_file():
            source = jinja_file.read_text()
        self.template = _compile_template(source) if isinstance(source, str) else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def render(self, messages: list[dict[str, Any]], tools: Any = None) -> str:
        """The prompt text of a conversation, with the generation prompt."""
        if self.template is None:
            return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + \
                PLAIN_GENERATION_PROMPT
        return self.template(messages=messages, add_generation_prompt=True, tools=tools,
                             bos_token=self.bos_token, eos_token=self.eos_token)

    def __call__(self, request: InferenceRequest) -> list[int] | None:
        try:
            if request.api == "completions":
                prompt = _first_prompt(request.body.get("prompt"))
                if prompt is None or isinstance(prompt, list):
                    return prompt
                return self.encode(prompt)
            messages = chat_messages(request)
            if messages is None:
                return None
            text = self.render(messages, request.body.get("tools"))
            return self.encode(text, add_special_tokens=False)
        except Exception as exc:  # a template may raise anything; never fail the request
            log.warning("cannot tokenize request %s: %s", request.request_id, exc)
            return None


def load_tokenizer(config: TokenizerConfig | str | dict[str, Any]) -> RequestTokenizer:
    """The request tokenizer a pool's `tokenizer:` setting names; ConfigError when it cannot."""
    if not isinstance(config, TokenizerConfig):
        try:
            config = TokenizerConfig.model_validate(config)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"tokenizer: {exc.errors()[0]['msg']}") from None
    if config.kind == "words":
        return WordsTokenizer()
    assert config.path is not None
    return HFTokenizer(config.path, config.chat_template)
