"""Decoding what arrives on the alerts topic: a bare alert takes a one-step path; everything
else, and everything that path refuses, goes the general way with the same outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from holmes_stream.intake import RejectedMessage, decode_message, parse_payload
from tests.conftest import load_fixture

LIMIT = 1 << 20


def general(raw: bytes) -> list[Any]:
    """What the general way alone makes of ``raw`` (the one-step path bypassed)."""
    return [
        (w.alert.model_dump(), w.tenant, w.question, w.model, w.toolsets)
        for w in parse_payload(json.loads(raw))
    ]


def decoded(raw: bytes) -> list[Any]:
    return [
        (w.alert.model_dump(), w.tenant, w.question, w.model, w.toolsets)
        for w in decode_message(raw, LIMIT)
    ]


def alert(**changes: Any) -> dict[str, Any]:
    return load_fixture("single-alert.json") | changes


@pytest.mark.parametrize(
    "payload",
    [
        alert(),
        alert(endsAt="0001-01-01T00:00:00Z", status="firing"),
        alert(startsAt="2026-01-02T03:04:05.678+02:00", generatorURL=None),
        alert(startsAt="2026-01-02T03:04:05", fingerprint=None),  # naive: taken as UTC
        alert(extra_field={"nested": [1, 2]}, annotations={"summary": 'says "alerts"'}),
        alert(labels={"alertname": "X", "note": "kind"}),
        load_fixture("group-firing-crashloop.json"),
        {"kind": "investigation_request", "alert": alert(), "question": "why?", "tenant": "t"},
    ],
)
def test_every_accepted_payload_decodes_as_the_general_way_does(payload: dict[str, Any]) -> None:
    raw = json.dumps(payload).encode()
    assert decoded(raw) == general(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"labels": {"alertname": "x"', "invalid_json"),
        (b"[1, 2]", "invalid_schema"),
        (b'"a string"', "invalid_schema"),
        (b'{"labels": {}, "startsAt": "2026-01-01T00:00:00Z"}', "invalid_schema"),
        (b'{"labels": {"a": "b"}}', "invalid_schema"),
        (b'{"labels": {"a": 1}, "startsAt": "2026-01-01T00:00:00Z"}', "invalid_schema"),
        (b'{"labels": {"a": "b"}, "startsAt": "yesterday"}', "invalid_schema"),
        (b"\xff\xfe\xfa not utf-8", "undecodable"),
        (b'{"labels": {"a": "\xff"}, "startsAt": "2026-01-01T00:00:00Z"}', "undecodable"),
        (b"", "invalid_json"),
    ],
)
def test_refusals_name_the_same_reason_as_before(raw: bytes, reason: str) -> None:
    with pytest.raises(RejectedMessage) as refused:
        decode_message(raw, LIMIT)
    assert refused.value.reason == reason


def test_python_json_accepts_what_the_one_step_parser_refuses() -> None:
    # A lone surrogate escape: pydantic's parser refuses it, Python's json takes it. The
    # message is decoded all the same, the general way.
    raw = b'{"labels": {"alertname": "x\\ud800"}, "startsAt": "2026-01-01T00:00:00Z"}'
    assert decoded(raw) == general(raw)


@pytest.mark.parametrize(
    ("starts_at", "canonical_start"),
    [
        ("2025-01-01T12:00:00.123456+02:00", "2025-01-01T10:00:00.123+00:00"),
        ("2025-01-01T10:00:00Z", "2025-01-01T10:00:00.000+00:00"),
        ("2025-01-01T10:00:00.5+00:00", "2025-01-01T10:00:00.500+00:00"),
        ("2025-01-01T04:30:00-05:30", "2025-01-01T10:00:00.000+00:00"),
        ("2025-01-01T10:00:00.999999", "2025-01-01T10:00:00.999+00:00"),  # naive: UTC
    ],
)
def test_the_episode_id_is_a_hash_of_the_identity_and_the_utc_start_in_milliseconds(
    starts_at: str, canonical_start: str
) -> None:
    """Ids of stored records depend on these exact bytes: a re-send after an upgrade must find
    its episode."""
    import hashlib

    raw = json.dumps(
        {"labels": {"alertname": "A"}, "startsAt": starts_at, "fingerprint": "fp-1"}
    ).encode()
    (work,) = decode_message(raw, LIMIT)
    expected = hashlib.sha256(f"fp-1|{canonical_start}".encode()).hexdigest()[:32]
    assert work.episode_key == work.investigation_id == expected
