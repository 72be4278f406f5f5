"""rowcall's Flora-Signature check: what it accepts and what it refuses."""

from __future__ import annotations

from rowcall.flora_signature import signature_header, verify_signature

SECRET = "whsec_current"
OLD = "whsec_previous"
BODY = b'{"id":"whd_1","type":"run.completed"}'
NOW = 1_790_000_000


def test_a_signature_made_with_the_secret_verifies() -> None:
    assert verify_signature(signature_header([SECRET], NOW, BODY), BODY, [SECRET], now=NOW)


def test_wrong_secret_tampered_body_and_missing_parts_are_refused() -> None:
    header = signature_header([SECRET], NOW, BODY)
    assert not verify_signature(header, BODY, ["whsec_other"], now=NOW)
    assert not verify_signature(header, BODY + b" ", [SECRET], now=NOW)
    assert not verify_signature(None, BODY, [SECRET], now=NOW)
    assert not verify_signature(f"t={NOW}", BODY, [SECRET], now=NOW)
    assert not verify_signature(header.split(",", 1)[1], BODY, [SECRET], now=NOW)
    assert not verify_signature(header, BODY, [], now=NOW)


def test_timestamps_outside_the_tolerance_are_refused_either_side() -> None:
    header = signature_header([SECRET], NOW, BODY)
    assert verify_signature(header, BODY, [SECRET], now=NOW + 300)
    assert not verify_signature(header, BODY, [SECRET], now=NOW + 301)
    assert not verify_signature(header, BODY, [SECRET], now=NOW - 301)


def test_rotation_on_either_side_verifies() -> None:
    # FLORA rotating: two v1 values, one of them ours.
    assert verify_signature(signature_header([OLD, SECRET], NOW, BODY), BODY, [SECRET], now=NOW)
    # Us rotating: one v1, and we hold the previous secret beside the current one.
    assert verify_signature(signature_header([OLD], NOW, BODY), BODY, [SECRET, OLD], now=NOW)
