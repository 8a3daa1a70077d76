"""A thin tokenizer over ``tokenizer.json`` (the ``tokenizers`` library) with the model's special
tokens and its chat template, read the way transformers 4.x and 5.x write them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Sequence


class Tokenizer:
    """Encode/decode text, know the EOS ids, render chat messages with the model's template."""

    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer as _HFTokenizer

        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json")
        self._tok = _HFTokenizer.from_file(str(path))
        # a second instance that reads special-token text (``<|im_start|>``) as plain text: for
        # what users wrote inside chat messages, so they cannot forge a turn of another role
        self._literal = _HFTokenizer.from_file(str(path))
        self._literal.encode_special_tokens = True
        settings = _read(model_dir / "tokenizer_config.json")
        config = _read(model_dir / "config.json")
        generation = _read(model_dir / "generation_config.json")
        self.bos_token = _token_text(settings.get("bos_token"))
        self.eos_token = _token_text(settings.get("eos_token"))
        self.bos_token_id = self._id(self.bos_token, config.get("bos_token_id"))
        eos_ids: list[int] = []
        for source in (generation.get("eos_token_id"), config.get("eos_token_id")):
            if source is not None:
                eos_ids += source if isinstance(source, list) else [source]
        tok_eos = self._id(self.eos_token, None)
        if tok_eos is not None:
            eos_ids.append(tok_eos)
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos_ids))
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        template_file = model_dir / "chat_template.jinja"
        self.chat_template: str | None = (
            template_file.read_text() if template_file.is_file() else settings.get("chat_template")
        )

    def _id(self, token: str | None, fallback: int | None) -> int | None:
        found = self._tok.token_to_id(token) if token else None
        return found if found is not None else fallback

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token text in it becomes special tokens (a raw prompt
        is the caller's own). ``encode_batch`` releases the GIL, so a long text encoded in a
        worker thread does not stall the others."""
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_literal(self, text: str) -> list[int]:
        """Token ids of ``text`` read as plain text: ``<|im_start|>`` stays characters."""
        return self._literal.encode_batch([text], add_special_tokens=False)[0].ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` ([{"role", "content"}]) with the model's jinja chat template."""
        if not self.chat_template:
            raise ValueError("this model has no chat template; pass a plain prompt instead")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        template = env.from_string(self.chat_template)
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


    def encode_chat(self, messages: Sequence[dict],
                    add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation: the template's own markup may hold special tokens, the
        messages' contents never do (each content is encoded as plain text)."""
        marks = {f"\x00{uuid.uuid4().hex}\x00": str(m.get("content") or "") for m in messages}
        marked = [{**m, "content": mark} for m, mark in zip(messages, marks)]
        rendered = self.apply_chat_template(marked, add_generation_prompt)
        ids: list[int] = []
        rest = rendered
        for mark, content in marks.items():
            before, found, rest = rest.partition(mark)
            if not found:  # the template rewrote the content: no safe split exists
                raise ValueError("this chat template rewrites message contents, so they cannot "
                                 "be kept apart from its special tokens")
            ids += self.encode(before) + self.encode_literal(content)
        return ids + self.encode(rest)


def _raise(message: str) -> None:
    raise ValueError(message)


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
