"""Remove secrets from text and data before they reach an LLM provider, a result or a log.

Alerts, tool output and gathered context can carry credentials (a connection string in a pod
spec, a token in a log line, a Secret printed by kubectl). Everything the service sends out or
keeps is passed through a ``Redactor``; each hit becomes ``[REDACTED:<kind>]``, keeping enough
around it (the key name, the URL's user) for the text to stay useful.

Precision matters both ways: a redacted pod name or image digest makes an investigation
useless, so patterns anchor on a recognisable shape or a secret-looking key.
"""

from __future__ import annotations

import functools
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from holmes_stream.settings import RedactionSettings

MARK = "[REDACTED:{}]"
Replacer = Callable[[re.Match[str]], str]


_SHORT_TEXT = 512
_SHORT_CACHE_SIZE = 16_384


def mark(kind: str) -> str:
    return MARK.format(kind)


@dataclass(frozen=True)
class Rule:
    """A pattern and what replaces a match: the whole match, or only group ``secret``.

    ``needs``: strings of which every match contains one, and ``hint``: a pattern that every
    match contains a match of (both in lower case when ``folded``). An ASCII text without them
    is passed over without running ``pattern``: most texts hold no secret, and the patterns (a
    word-boundary scan each, case-insensitive) cost ten to a hundred times more than these
    tests (``Redactor.redact_text``).
    """

    kind: str
    pattern: re.Pattern[str]
    replace: Replacer | None = None
    needs: tuple[str, ...] = ()
    folded: bool = False
    hint: re.Pattern[str] | None = None

    def apply(self, text: str) -> str:
        return self.pattern.sub(self.replace or self._default, text)

    def may_match(self, text: str, lowered: str) -> bool:
        """False only if the pattern cannot match ``text`` (ASCII; ``lowered`` its lower case).

        Exact for ASCII only: under ``(?i)`` Python's ``re`` also equates a few non-ASCII
        letters with ASCII ones (the long s with s, the Kelvin sign with k)."""
        haystack = lowered if self.folded else text
        if self.needs and not any(literal in haystack for literal in self.needs):
            return False
        return self.hint is None or self.hint.search(haystack) is not None

    def _default(self, m: re.Match[str]) -> str:
        if "secret" in m.re.groupindex and m.group("secret"):
            base, (start, end) = m.start(0), m.span("secret")
            return m.group(0)[: start - base] + mark(self.kind) + m.group(0)[end - base :]
        return mark(self.kind)


def _keep_groups(kind: str, value_group: str = "value") -> Replacer:
    """Replace one named group, keep the rest of the match (key, separator, quotes)."""

    def replace(m: re.Match[str]) -> str:
        value = m.group(value_group)
        if value.startswith("[REDACTED"):
            return m.group(0)
        base = m.start(0)
        start, end = m.span(value_group)
        whole = m.group(0)
        return whole[: start - base] + mark(kind) + whole[end - base :]

    return replace


def _kv_value(kind: str) -> Replacer:
    """Key-value pairs: keep the key and the quotes around the value."""

    def replace(m: re.Match[str]) -> str:
        value = m.group("value")
        quote = value[0] if value[:1] in {'"', "'"} else ""
        inner = value[1:-1] if quote and len(value) > 1 and value[-1] == quote else value
        if not inner or inner.lstrip(quote).startswith("[REDACTED"):
            return m.group(0)
        return m.group("key") + m.group("sep") + quote + mark(kind) + quote

    return replace


_SECRET_WORDS = (
    r"password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|client[_-]?secret|credentials?"
)

# Order matters: multi-line and structured secrets first, so later generic rules do not cut
# them in pieces; each later rule skips what an earlier one already marked.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "gcp_private_key",
        re.compile(r'(?P<key>"private_key"\s*:\s*")(?P<value>(?:[^"\\]|\\.)+)(?=")'),
        _keep_groups("gcp_private_key"),
        needs=('"private_key"',),
    ),
    Rule(
        "private_key",
        # Also a key cut short (no END line), as in a truncated log.
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*\Z)"
        ),
        needs=("PRIVATE KEY",),
    ),
    Rule(
        "authorization",
        re.compile(
            r"(?i)(?P<key>\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?)"
            r"(?P<value>(?:(?:bearer|basic|token|digest|negotiate|apikey)[ \t]+)?"
            r"[^\s\"',;}\]]+)"
        ),
        _keep_groups("authorization"),
        needs=("authorization",),
        folded=True,
    ),
    Rule(
        "bearer_token",
        re.compile(r"(?i)(?P<key>\bbearer[ \t]+)(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)"),
        _keep_groups("bearer_token"),
        needs=("bearer",),
        folded=True,
    ),
    Rule(
        "url_password",
        re.compile(
            r"(?i)(?P<key>\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@?#\[\]]*:)"
            r"(?P<value>[^\s@/?#]+)(?=@)"
        ),
        _keep_groups("url_password"),
        hint=re.compile(r"://[^\s:/@?#\[\]]*:[^\s@/?#]+@"),
    ),
    Rule(
        "aws_secret_access_key",
        re.compile(
            r"(?i)(?P<key>\baws_?secret(?:_access)?_?key[\"']?)"
            r"(?P<sep>[ \t]*[:=][ \t]*)(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;}]+)"
        ),
        _kv_value("aws_secret_access_key"),
        needs=("aws",),
        folded=True,
    ),
    Rule(
        "aws_access_key_id",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
        needs=("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Rule(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
        needs=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule("slack_token", re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"), needs=("xox",)),
    Rule(
        "api_key",
        re.compile(
            r"\b(?:sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"
            r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,})"
        ),
        needs=("sk-", "sk_", "rk_"),
    ),
    Rule(
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
        needs=("eyJ",),
    ),
    Rule(
        "secret_value",
        re.compile(
            r"(?i)(?P<key>\b[A-Za-z0-9_.\-]*(?:" + _SECRET_WORDS + r")[\"']?)"
            r"(?P<sep>[ \t]*[:=][ \t]*)"
            r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s\"'&,;}\]]+)"
        ),
        _kv_value("secret_value"),
        # Every word of _SECRET_WORDS holds one of these.
        needs=("pass", "secret", "token", "key", "credential"),
        folded=True,
        # The pattern's word and separator, matched in the lower-cased text without (?i):
        # Python's re finds literals far faster when case matters.
        hint=re.compile(r"(?:" + _SECRET_WORDS + r")[\"']?[ \t]*[:=]"),
    ),
)

# Field names whose values are secrets whatever they look like (matched on the key's last
# word, so ``max_tokens`` or ``secret_name`` survive while ``db_password`` does not).
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|secret|token|api_?key|apikey|access_?key"
    r"|secret_?key|private_?key|client_?secret|authorization|credentials?|cookie"
    r"|session_?id|auth)$"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# Kubernetes Secret manifests: every value under data/stringData is a secret.
_YAML_SECRET_KIND = re.compile(r"(?m)^[ \t]*kind:[ \t]*[\"']?Secret[\"']?[ \t]*$")
_YAML_DATA_BLOCK = re.compile(
    r"(?m)^(?P<indent>[ \t]*)(?:data|stringData):[ \t]*\n"
    r"(?P<body>(?:(?P=indent)[ \t]+\S.*(?:\n|\Z))+)"
)
_YAML_ITEM = re.compile(r"(?m)^(?P<key>[ \t]+[^:\s][^:\n]*:[ \t]*)(?P<value>\S.*)$")
_JSON_SECRET_KIND = re.compile(r'"kind"\s*:\s*"Secret"')
_JSON_DATA_BLOCK = re.compile(r'"(?:data|stringData)"\s*:\s*\{(?P<body>[^{}]*)\}')
_JSON_ITEM = re.compile(r'(?P<key>"[^"\\]*"\s*:\s*")(?P<value>(?:[^"\\]|\\.)*)(?=")')
_DOC_SPLIT = re.compile(r"(?m)^---[ \t]*$")

K8S_SECRET = "k8s_secret"


def _yaml_secret(doc: str) -> str:
    def block(m: re.Match[str]) -> str:
        out: list[str] = []
        item_indent: int | None = None
        for line in m.group("body").splitlines(keepends=True):
            indent = len(line) - len(line.lstrip(" \t"))
            if item_indent is None:
                item_indent = indent
            if indent > item_indent:
                continue  # a block scalar's lines belong to the value redacted above
            out.append(_YAML_ITEM.sub(_keep_groups(K8S_SECRET), line))
        return m.group(0)[: m.start("body") - m.start(0)] + "".join(out)

    return _YAML_DATA_BLOCK.sub(block, doc)


def _json_secret_block(m: re.Match[str]) -> str:
    body = _JSON_ITEM.sub(_keep_groups(K8S_SECRET), m.group("body"))
    whole, base = m.group(0), m.start(0)
    return whole[: m.start("body") - base] + body + whole[m.end("body") - base :]


def secret_key(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a field called ``name`` holds a secret (``apiKey``, ``db_password``, ...)."""
    normal = _CAMEL.sub("_", name).lower().replace("-", "_").replace(".", "_")
    return bool(_SECRET_KEY.search(normal)) or normal in extra


class Redactor:
    def __init__(
        self,
        rules: Iterable[Rule] = DEFAULT_RULES,
        *,
        extra_patterns: Iterable[str | re.Pattern[str]] = (),
        extra_secret_keys: Iterable[str] = (),
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        custom = [
            Rule("custom", re.compile(p) if isinstance(p, str) else p) for p in extra_patterns
        ]
        self.rules: tuple[Rule, ...] = (*rules, *custom)
        self.extra_secret_keys = frozenset(
            _CAMEL.sub("_", k).lower().replace("-", "_") for k in extra_secret_keys
        )
        # Alert labels and annotations repeat across alerts and re-sends: short strings are
        # redacted once (lru_cache is thread-safe; tools run on HolmesGPT's threads).
        self._short = functools.lru_cache(maxsize=_SHORT_CACHE_SIZE)(self._redact_text)
        # Field names repeat even more (every alert has the same few label names).
        self._secret_key = functools.lru_cache(maxsize=_SHORT_CACHE_SIZE)(self._is_secret_key)

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> Redactor:
        return cls(
            extra_patterns=settings.extra_patterns,
            extra_secret_keys=settings.extra_secret_keys,
            enabled=settings.enabled,
        )

    # -- text --------------------------------------------------------------------------------
    def redact_text(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        if len(text) <= _SHORT_TEXT:
            return self._short(text)
        return self._redact_text(text)

    def _redact_text(self, text: str) -> str:
        text = self._k8s_secrets(text)
        # A rule runs on what the rules before it left (their marks hold words later rules
        # look for): the substring test is of the current text.
        ascii_ = text.isascii()
        lowered = text.lower() if ascii_ else text
        for rule in self.rules:
            if ascii_ and not rule.may_match(text, lowered):
                continue
            redacted = rule.apply(text)
            if redacted != text:
                text = redacted
                ascii_ = text.isascii()
                lowered = text.lower() if ascii_ else text
        return text

    def _k8s_secrets(self, text: str) -> str:
        if "Secret" not in text:  # both manifests' patterns hold it
            return text
        if _YAML_SECRET_KIND.search(text):
            # Per document, so a ConfigMap next to a Secret keeps its data.
            parts = _DOC_SPLIT.split(text)
            seps = _DOC_SPLIT.findall(text)
            docs = [_yaml_secret(p) if _YAML_SECRET_KIND.search(p) else p for p in parts]
            text = docs[0] + "".join(s + d for s, d in zip(seps, docs[1:], strict=True))
        if _JSON_SECRET_KIND.search(text):
            text = _JSON_DATA_BLOCK.sub(_json_secret_block, text)
        return text

    # -- data --------------------------------------------------------------------------------
    def redact_obj(self, value: Any) -> Any:
        """A redacted copy of nested dicts, lists and strings; other values pass unchanged."""
        if not self.enabled:
            return value
        return self._obj(value)

    def keeps(self, fields: Mapping[str, Any]) -> bool:
        """True only if ``redact_obj`` leaves these fields as they are (False: it may not)."""
        if not self.enabled:
            return True
        if fields.get("kind") == "Secret":
            return False
        secret_key, short = self._secret_key, self._short
        for k, v in fields.items():
            if type(v) is str and len(v) <= _SHORT_TEXT and type(k) is str:
                if v and (secret_key(k) or short(v) != v):
                    return False
            elif self._field(k, v) != v:
                return False
        return True

    def _obj(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            if value.get("kind") == "Secret":
                return self._secret_manifest(value)
            return self._mapping(value)
        if isinstance(value, list | tuple):
            return [self._obj(v) for v in value]
        return value

    def _mapping(self, value: Mapping[Any, Any]) -> dict[Any, Any]:
        """``_field`` of every item, with short strings (labels, annotations: most of what
        alerts hold) handled inline: the same result without four calls per field."""
        out: dict[Any, Any] = {}
        secret_key, short = self._secret_key, self._short
        for k, v in value.items():
            if type(v) is str and len(v) <= _SHORT_TEXT and type(k) is str:
                if not v:
                    out[k] = v
                elif secret_key(k) and not v.startswith("[REDACTED"):
                    out[k] = mark("secret_field")
                else:
                    out[k] = short(v)
            else:
                out[k] = self._field(k, v)
        return out

    def _field(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and self._secret_key(key):
            if isinstance(value, str) and value and not value.startswith("[REDACTED"):
                return mark("secret_field")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return mark("secret_field")
        return self._obj(value)

    def _is_secret_key(self, key: str) -> bool:
        return secret_key(key, self.extra_secret_keys)

    def _secret_manifest(self, value: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in {"data", "stringData"} and isinstance(v, Mapping):
                out[k] = {name: mark(K8S_SECRET) for name in v}
            else:
                out[k] = self._field(k, v)
        return out

    # -- logs --------------------------------------------------------------------------------
    def log_filter(self) -> RedactingFilter:
        return RedactingFilter(self)


_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class RedactingFilter(logging.Filter):
    """Redacts a record's message, its ``extra`` fields and its traceback in place.

    Install it on handlers (``handler.addFilter``): a filter on a logger does not see records
    propagated from child loggers.
    """

    def __init__(self, redactor: Redactor | None = None, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        if not r.enabled:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's error path
            return True
        redacted = r.redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_RECORD_KEYS:
                continue
            record.__dict__[key] = r._field(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            clean = r.redact_text(text)
            if clean != text:
                # Formatters print exc_text when exc_info is gone; JSON logs print ``exception``.
                record.exc_info, record.exc_text = None, clean
                record.__dict__["exception"] = clean
        return True
