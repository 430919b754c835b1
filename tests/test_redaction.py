"""Planted secrets of every kind are redacted; ordinary operational text survives intact."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import pytest

from holmes_stream.logs import JsonFormatter
from holmes_stream.redaction import RedactingFilter, Redactor, secret_key
from holmes_stream.settings import RedactionSettings

# Fake credentials, shaped like the real ones.
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
SLACK = "xoxb-2048-4096-AbCdEfGhIjKlMnOp"
OPENAI = "sk-proj-" + "Zx9" * 12
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA7bq98Hg\nq0K3x5Vt9Q2rW==\n"
    "-----END RSA PRIVATE KEY-----"
)
DIGEST = "sha256:" + "3f1c9a0b2e7d4c5f" * 4
POD = "payment-api-7d9f8b6c5-x2x9k"

CASES = [
    # (text, secret that must go, kind in the mark, what must stay)
    (f"Authorization: Bearer {OPENAI}x", OPENAI, "authorization", "Authorization: "),
    ('{"headers": {"authorization": "Basic dXNlcjpwYXNz"}}', "dXNlcjpwYXNz",
     "authorization", '"authorization": "'),
    (f"called with bearer {JWT}", JWT, "bearer_token", "called with bearer "),
    (f"OPENAI_API_KEY={OPENAI}", OPENAI, "api_key", "OPENAI_API_KEY="),
    (f"key id {AWS_ID} in use", AWS_ID, "aws_access_key_id", "key id "),
    (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET, "aws_secret_access_key",
     "aws_secret_access_key = "),
    (f"private key:\n{PEM}\nend of file", "MIIEpAIBAAKCAQEA7bq98Hg", "private_key", "end of file"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA (truncated", "b3BlbnNz",
     "private_key", ""),
    ("postgres://app:hunter2@db.checkout:5432/payments", "hunter2", "url_password",
     "postgres://app:"),
    ("redis://:r3d1s-pw@cache:6379/0", "r3d1s-pw", "url_password", "@cache:6379/0"),
    ("login failed: user=bob password=S3cr3t! retry", "S3cr3t!", "secret_value", "user=bob"),
    ("GET /cb?code=1&secret=abc123&state=x", "abc123", "secret_value", "&state=x"),
    ("export DB_TOKEN='tok en 42'", "tok en 42", "secret_value", "export DB_TOKEN='"),
    (f"push with {GITHUB} failed", GITHUB, "github_token", "push with "),
    (f"SLACK_BOT={SLACK}", SLACK, "slack_token", "SLACK_BOT="),
    (f"id_token {JWT}", JWT, "jwt", "id_token "),
]  # fmt: skip


@pytest.mark.parametrize(("text", "secret", "kind", "kept"), CASES)
def test_planted_secret_is_redacted(text: str, secret: str, kind: str, kept: str) -> None:
    out = Redactor().redact_text(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out, out
    assert kept in out


def test_gcp_service_account_key() -> None:
    key = {
        "type": "service_account",
        "project_id": "shop-prod",
        "private_key_id": "0123456789abcdef",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
        "-----END PRIVATE KEY-----\n",
        "client_email": "holmes@shop-prod.iam.gserviceaccount.com",
    }
    out = Redactor().redact_text(json.dumps(key, indent=2))
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in out
    assert '"private_key": "[REDACTED:gcp_private_key]"' in out
    assert json.loads(out)["client_email"] == key["client_email"]


SECRET_YAML = """\
apiVersion: v1
kind: Secret
metadata:
  name: db-creds
  namespace: checkout
type: Opaque
data:
  password: aHVudGVyMg==
  username: YWRtaW4=
stringData:
  config.yaml: |
    url: https://db.checkout
    pass: plain-text-pass
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: fast
"""


def test_kubernetes_secret_yaml() -> None:
    out = Redactor().redact_text(SECRET_YAML)
    for secret in ("aHVudGVyMg==", "YWRtaW4=", "plain-text-pass"):
        assert secret not in out
    assert "  password: [REDACTED:k8s_secret]" in out
    assert "  config.yaml: [REDACTED:k8s_secret]" in out
    assert "name: db-creds" in out
    assert "  mode: fast" in out  # the ConfigMap in the same stream keeps its data


def test_kubernetes_secret_json_text_and_object() -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "api-keys", "namespace": "checkout"},
        "data": {"tls.key": "LS0tLS1CRUdJTg==", "user": "YWRtaW4="},
    }
    text = Redactor().redact_text(json.dumps(manifest))
    assert "LS0tLS1CRUdJTg==" not in text and "YWRtaW4=" not in text
    assert json.loads(text)["metadata"]["name"] == "api-keys"

    obj = Redactor().redact_obj(manifest)
    assert obj["data"] == {"tls.key": "[REDACTED:k8s_secret]", "user": "[REDACTED:k8s_secret]"}
    assert obj["metadata"] == manifest["metadata"]
    assert manifest["data"]["user"] == "YWRtaW4="  # the input is not changed


SURVIVORS = [
    "https://grafana.example.com:3000/d/abc123/checkout?orgId=1&var-ns=checkout",
    f"pod {POD} restarted 14 times",
    f"image registry.example.com/payment-api@{DIGEST}",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "request id 123e4567-e89b-12d3-a456-426614174000",
    "kind: Secret referenced by secretName: db-creds",
    "volumes:\n- name: creds\n  secret:\n    secretName: db-creds\n",
    "usage: prompt_tokens=120 completion_tokens=30 max_tokens=4096",
    "alertname=KubePodCrashLooping reason=CrashLoopBackOff namespace=checkout",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----",
    "task-runner-0123456789abcdefghij is ready",
]


@pytest.mark.parametrize("text", SURVIVORS)
def test_ordinary_text_survives(text: str) -> None:
    assert Redactor().redact_text(text) == text


def test_redact_obj_by_key_and_by_value() -> None:
    data = {
        "db_password": "hunter2",
        "apiKey": "abc",
        "x-api-key": 12345,
        "Authorization": "Basic abc",
        "client_secret": "s",
        "max_tokens": 4096,
        "secret_name": "db-creds",
        "pod": POD,
        "enabled": True,
        "empty_token": "",
        "nested": [{"env": "DATABASE_URL=postgres://app:pw1@db/x", "token": None}],
        "digest": DIGEST,
    }
    out = Redactor().redact_obj(data)
    for key in ("db_password", "apiKey", "x-api-key", "Authorization", "client_secret"):
        assert out[key] == "[REDACTED:secret_field]", key
    assert out["max_tokens"] == 4096
    assert out["secret_name"] == "db-creds"
    assert out["pod"] == POD and out["digest"] == DIGEST and out["enabled"] is True
    assert out["empty_token"] == ""
    assert out["nested"][0]["env"] == "DATABASE_URL=postgres://app:[REDACTED:url_password]@db/x"
    assert out["nested"][0]["token"] is None
    assert data["db_password"] == "hunter2"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("clientSecret", True),
        ("aws_secret_access_key", True),
        ("refresh-token", True),
        ("secretName", False),
        ("total_tokens", False),
        ("token_count", False),
        ("author", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert secret_key(key) is secret


def test_settings_extra_patterns_keys_and_switch() -> None:
    settings = RedactionSettings(
        extra_patterns=[r"ACME-[0-9]{6}", r"tenant-key:(?P<secret>\w+)"],
        extra_secret_keys=["ssn"],
    )
    r = Redactor.from_settings(settings)
    assert r.redact_text("ticket ACME-123456 opened") == "ticket [REDACTED:custom] opened"
    assert r.redact_text("tenant-key:abc9 ok") == "tenant-key:[REDACTED:custom] ok"
    assert r.redact_obj({"ssn": "123"}) == {"ssn": "[REDACTED:secret_field]"}

    off = Redactor.from_settings(RedactionSettings(enabled=False))
    assert off.redact_text("password=x") == "password=x"
    assert off.redact_obj({"password": "x"}) == {"password": "x"}


def test_log_filter_redacts_message_args_extras_and_traceback() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter(Redactor()))
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s", "postgres://app:pw-in-arg@db/x", extra={"api_key": "k1"})
        try:
            raise RuntimeError(f"auth failed with token={OPENAI}")
        except RuntimeError:
            log.exception("call failed")
    finally:
        log.removeHandler(handler)
    first, second = records
    assert first.getMessage() == "connecting to postgres://app:[REDACTED:url_password]@db/x"
    assert first.__dict__["api_key"] == "[REDACTED:secret_field]"
    formatted = JsonFormatter().format(second)
    assert OPENAI not in formatted
    assert "RuntimeError: auth failed with token=[REDACTED:" in json.loads(formatted)["exception"]
    assert OPENAI not in logging.Formatter().format(second)


@pytest.mark.parametrize(
    "planted",
    [
        {"labels": {"alertname": "A", "db_password": "hunter2hunter2"}},
        {"annotations": {"summary": "login with token=abcdef0123456789"}},
        {"generatorURL": "http://admin:s3cretpass@prom:9090/graph"},
        {"annotations": {"key": "AKIAABCDEFGHIJKLMNOP"}},
        {"runbook": "curl -H 'Authorization: Bearer abcdefghijklmnop'"},  # an extra field
    ],
)
def test_alerts_are_stored_redacted_wherever_the_secret_is(planted: dict[str, Any]) -> None:
    from holmes_stream.schemas import Alert
    from holmes_stream.service import Extras, InvestigationService
    from holmes_stream.settings import WorkerSettings

    service = InvestigationService(
        cast(Any, None), cast(Any, None), WorkerSettings(), extras=Extras(redactor=Redactor())
    )
    plain = {"labels": {"alertname": "A"}, "startsAt": "2026-01-01T00:00:00Z"}
    clean = Alert.model_validate(plain)
    assert service._redacted(clean) is clean  # nothing to redact: the alert itself
    alert = Alert.model_validate(plain | planted)
    stored = service._redacted(alert).model_dump_json()
    assert "[REDACTED" in stored
    for secret in ("hunter2hunter2", "abcdef0123456789", "s3cretpass", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in stored
    assert "abcdefghijklmnop'" not in stored


def _every_rule_run(redactor: Redactor, text: str) -> str:
    """Redaction as it was before rules were passed over: every pattern, in order."""
    text = redactor._k8s_secrets(text)
    for rule in redactor.rules:
        text = rule.apply(text)
    return text


def _case_variants(text: str) -> list[str]:
    return [text, text.upper(), text.lower(), text.swapcase(), text.title()]


def test_passing_over_rules_changes_nothing() -> None:
    """Rules whose literals a text lacks are not run: the outcome is what running every rule
    gives, on every planted secret (in every case), mixed with ordinary text and each other."""
    import random

    planted = [text for text, *_ in CASES] + SURVIVORS + [SECRET_YAML]
    planted += [
        "token: abc",
        "client-secret = 'x y'",
        "Api-Key: 1234",
        "ACCESS_KEY=zzz",
        'credential="a\\"b"',
        "proxy-authorization: Digest abc",
        "the pas\u017fword=x",  # long s: not ASCII, every rule runs
        "ap\u0131_key=\u00fcn\u00efcode",  # dotless i
    ]
    pieces = [v for text in planted for v in _case_variants(text)]
    rng = random.Random(7)
    texts = list(pieces)
    for _ in range(400):
        texts.append(" ".join(rng.sample(pieces, rng.randint(2, 6))))
    redactor = Redactor(extra_patterns=[r"ORDER-\d{6}"])
    texts.append("customer ORDER-123456 paid")
    changed = 0
    for text in texts:
        expected = _every_rule_run(redactor, text)
        assert redactor._redact_text(text) == expected, text
        changed += expected != text
    assert changed > len(texts) // 2  # the corpus exercises the rules, not only their absence


def test_an_alert_field_named_a_secret_key_is_stored_redacted() -> None:
    """A configured secret key hides the field's whole value, wherever the field is: the
    alert's URL included (its text alone holds no secret here)."""
    from holmes_stream.schemas import Alert
    from holmes_stream.service import Extras, InvestigationService
    from holmes_stream.settings import WorkerSettings

    redactor = Redactor(extra_secret_keys=["generatorURL"])
    service = InvestigationService(
        cast(Any, None), cast(Any, None), WorkerSettings(), extras=Extras(redactor=redactor)
    )
    alert = Alert.model_validate(
        {
            "labels": {"alertname": "A"},
            "startsAt": "2026-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph?g0.expr=internal_metric",
        }
    )
    stored = service._redacted(alert)
    assert stored.generatorURL != alert.generatorURL
    assert "internal_metric" not in stored.model_dump_json()
