"""FieldEncryptor and KeyRing: envelopes, AAD binding (S15), keys and nonces (S16)."""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
from typing import Annotated, Any, cast

import pytest
from pydantic import BaseModel

from dashpersist.encryption import (
    ENVELOPE_PREFIX,
    Encrypted,
    FieldEncryptor,
    KeyRing,
    encrypted_fields,
    is_envelope,
)
from dashpersist.errors import ConfigurationError, DecryptionError, ValidationError
from dashpersist.types import JsonObject

FIELDS = ["widgets[*].settings.api_key", "widgets[*].settings.token", "metadata.secret"]
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def encryptor(keys: dict[str, bytes] | None = None, **options: str) -> FieldEncryptor:
    return FieldEncryptor(KeyRing(keys or {"k1": K1}, **options), FIELDS)


def layout() -> JsonObject:
    return {
        "widgets": [
            {"id": "w1", "type": "chart", "settings": {"api_key": "sk-live-111", "color": "red"}},
            {"id": "w2", "type": "chart", "settings": {"api_key": "sk-live-222", "token": 42}},
            {"id": "w3", "type": "text", "settings": {}},
        ],
        "metadata": {"secret": {"nested": [1, "two", None]}},
    }


def encrypted(
    fe: FieldEncryptor, doc: JsonObject, user: str = "alice", lid: str = "main"
) -> JsonObject:
    return fe.encrypt_document(doc, user_id=user, layout_id=lid)


def decrypt_error(
    fe: FieldEncryptor, doc: JsonObject, user: str = "alice", lid: str = "main"
) -> DecryptionError:
    with pytest.raises(DecryptionError) as caught:
        fe.decrypt_document(doc, user_id=user, layout_id=lid)
    return caught.value


def settings(doc: JsonObject, index: int) -> dict[str, Any]:
    widgets = cast(list[dict[str, Any]], doc["widgets"])
    return cast(dict[str, Any], widgets[index]["settings"])


# -- round trip and purity ------------------------------------------------------------


def test_chosen_fields_become_envelopes_and_decrypt_back_to_their_values() -> None:
    fe = encryptor()
    doc = layout()

    sealed = encrypted(fe, doc)
    opened = fe.decrypt_document(sealed, user_id="alice", layout_id="main")

    assert all(
        is_envelope(v) for v in (settings(sealed, 0)["api_key"], settings(sealed, 1)["token"])
    )
    assert str(settings(sealed, 0)["api_key"]).startswith("dp:v1:k1:")
    assert settings(sealed, 0)["color"] == "red"
    assert opened == doc


def test_encrypting_and_decrypting_do_not_change_their_inputs() -> None:
    fe = encryptor()
    doc = layout()
    before = copy.deepcopy(doc)

    sealed = encrypted(fe, doc)
    sealed_before = copy.deepcopy(sealed)
    fe.decrypt_document(sealed, user_id="alice", layout_id="main")

    assert doc == before
    assert sealed == sealed_before


def test_no_plaintext_remains_in_the_encrypted_document() -> None:
    sealed = encrypted(encryptor(), layout())

    assert b"sk-live" not in repr(sealed).encode()
    assert "two" not in repr(sealed)


def test_reordering_widgets_keeps_every_ciphertext_valid() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    reordered = {**sealed, "widgets": list(reversed(sealed["widgets"]))}  # type: ignore[arg-type]

    opened = fe.decrypt_document(reordered, user_id="alice", layout_id="main")

    assert settings(opened, 2)["api_key"] == "sk-live-111"


def test_an_unchanged_secret_keeps_its_previous_ciphertext() -> None:
    fe = encryptor()
    first = encrypted(fe, layout())
    edited = layout()
    settings(edited, 1)["api_key"] = "sk-live-333"

    second = fe.encrypt_document(edited, user_id="alice", layout_id="main", previous=first)

    assert settings(second, 0)["api_key"] == settings(first, 0)["api_key"]
    assert second["metadata"] == first["metadata"]
    assert settings(second, 1)["api_key"] != settings(first, 1)["api_key"]


def test_a_fresh_encryptor_also_keeps_unchanged_ciphertext_by_decrypting_it() -> None:
    first = encrypted(encryptor(), layout())
    edited = layout()
    settings(edited, 1)["api_key"] = "sk-live-333"

    second = FieldEncryptor(KeyRing({"k1": K1}), FIELDS, memory_size=0).encrypt_document(
        edited, user_id="alice", layout_id="main", previous=first
    )

    assert settings(second, 0)["api_key"] == settings(first, 0)["api_key"]
    assert settings(second, 1)["api_key"] != settings(first, 1)["api_key"]


def test_a_previous_ciphertext_from_another_place_is_never_kept() -> None:
    fe = encryptor()
    first = encrypted(fe, layout())
    moved = copy.deepcopy(first)
    settings(moved, 1)["api_key"] = settings(first, 0)["api_key"]
    same_secret_there = layout()
    settings(same_secret_there, 1)["api_key"] = "sk-live-111"

    second = fe.encrypt_document(
        same_secret_there, user_id="alice", layout_id="main", previous=moved
    )

    assert settings(second, 1)["api_key"] != settings(first, 0)["api_key"]
    assert settings(fe.decrypt_document(second, user_id="alice", layout_id="main"), 1)[
        "api_key"
    ] == ("sk-live-111")


def test_a_value_equal_in_python_but_not_in_json_counts_as_changed() -> None:
    fe = encryptor()
    doc = layout()
    settings(doc, 1)["token"] = 1
    first = encrypted(fe, doc)
    settings(doc, 1)["token"] = True

    second = fe.encrypt_document(doc, user_id="alice", layout_id="main", previous=first)

    assert settings(second, 1)["token"] != settings(first, 1)["token"]
    assert (
        settings(fe.decrypt_document(second, user_id="alice", layout_id="main"), 1)["token"] is True
    )


def test_an_envelope_passed_back_in_is_kept_when_it_belongs_here() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())

    again = fe.encrypt_document(sealed, user_id="alice", layout_id="main")

    assert again == sealed


def test_a_foreign_envelope_smuggled_into_a_save_is_refused() -> None:
    fe = encryptor()
    bobs = encrypted(fe, layout(), user="bob")

    with pytest.raises(DecryptionError) as caught:
        fe.encrypt_document(bobs, user_id="alice", layout_id="main")

    assert caught.value.user_id == "alice"


def test_values_json_cannot_hold_are_refused_before_encryption() -> None:
    doc = layout()
    settings(doc, 0)["api_key"] = float("nan")

    with pytest.raises(ValidationError):
        encrypted(encryptor(), doc)


# -- S15: tampered or swapped ciphertext ----------------------------------------------


def flip_bit(envelope: str, byte_index: int) -> str:
    head, _, payload = envelope.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[byte_index] ^= 0x01
    return f"{head}:{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


@pytest.mark.parametrize(
    "byte_index",
    [0, 11, 12, -17, -1],
    ids=["nonce", "nonce-end", "ciphertext", "ciphertext-end", "tag"],
)
def test_one_flipped_bit_anywhere_raises_decryption_error(byte_index: int) -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    settings(sealed, 0)["api_key"] = flip_bit(str(settings(sealed, 0)["api_key"]), byte_index)

    error = decrypt_error(fe, sealed)

    assert error.reason == "authentication_failed"
    assert error.path == "widgets[w1].settings.api_key"


@pytest.mark.parametrize("cut", [1, 10, 40])
def test_a_truncated_envelope_raises_decryption_error(cut: int) -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    settings(sealed, 0)["api_key"] = str(settings(sealed, 0)["api_key"])[:-cut]

    error = decrypt_error(fe, sealed)

    assert error.reason in {"authentication_failed", "malformed"}


@pytest.mark.parametrize(
    "value", ["dp:v1:k1", "dp:v1:k1:!!!", "dp:v9:k1:AAAA", "dp:v1:k1:" + "A" * 10]
)
def test_malformed_envelopes_raise_decryption_error(value: str) -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    settings(sealed, 0)["api_key"] = value

    error = decrypt_error(fe, sealed)

    assert error.reason in {"malformed", "unsupported_version"}


def test_a_ciphertext_moved_to_another_user_fails_naming_user_layout_and_path() -> None:
    fe = encryptor()
    alices = encrypted(fe, layout(), user="alice")

    error = decrypt_error(fe, alices, user="bob")

    assert (error.user_id, error.layout_id, error.path) == (
        "bob",
        "main",
        "widgets[w1].settings.api_key",
    )
    assert (
        "'bob'" in str(error)
        and "'main'" in str(error)
        and "widgets[w1].settings.api_key" in str(error)
    )


def test_a_ciphertext_moved_to_another_layout_of_the_same_user_fails() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout(), lid="main")

    error = decrypt_error(fe, sealed, lid="other")

    assert error.layout_id == "other"


def test_a_ciphertext_moved_to_another_field_of_the_same_layout_fails() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    settings(sealed, 1)["token"] = settings(sealed, 0)["api_key"]

    error = decrypt_error(fe, sealed)

    assert error.path == "widgets[w2].settings.token"


def test_a_ciphertext_moved_to_another_widget_fails() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    settings(sealed, 1)["api_key"] = settings(sealed, 0)["api_key"]

    error = decrypt_error(fe, sealed)

    assert error.path == "widgets[w2].settings.api_key"


def test_an_older_ciphertext_of_the_same_field_still_decrypts_as_documented() -> None:
    # Decision (module docstring): the row version is not in the AAD, so a rollback can
    # copy old ciphertext; swapping in an older ciphertext of the same field goes unseen.
    fe = encryptor()
    old = encrypted(fe, layout())
    newer = layout()
    settings(newer, 0)["api_key"] = "sk-live-new"
    new = fe.encrypt_document(newer, user_id="alice", layout_id="main", previous=old)
    settings(new, 0)["api_key"] = settings(old, 0)["api_key"]

    opened = fe.decrypt_document(new, user_id="alice", layout_id="main")

    assert settings(opened, 0)["api_key"] == "sk-live-111"


def test_errors_never_contain_key_material_or_plaintext() -> None:
    fe = encryptor()
    sealed = encrypted(fe, layout())
    errors = [decrypt_error(fe, sealed, user="bob"), decrypt_error(encryptor({"k1": K2}), sealed)]

    for error in errors:
        text = str(error) + repr(error.args)
        assert "sk-live" not in text
        assert K1.hex() not in text and base64.b64encode(K1).decode() not in text
        assert K2.hex() not in text


# -- S16: keys, rotation, nonces ------------------------------------------------------


def test_a_missing_key_id_is_named_distinctly_from_tampering() -> None:
    sealed = encrypted(encryptor({"k1": K1}), layout())

    error = decrypt_error(encryptor({"k2": K2}), sealed)

    assert error.reason == "missing_key"
    assert error.key_id == "k1"
    assert "key id 'k1' is not in the key ring" in str(error)


def test_the_same_key_id_with_other_bytes_fails_authentication() -> None:
    sealed = encrypted(encryptor({"k1": K1}), layout())

    error = decrypt_error(encryptor({"k1": K2}), sealed)

    assert error.reason == "authentication_failed"


def test_the_newest_key_encrypts_unless_a_primary_is_named() -> None:
    newest = encrypted(encryptor({"k1": K1, "k2": K2}), layout())
    named = encrypted(encryptor({"k1": K1, "k2": K2}, primary="k1"), layout())

    assert str(settings(newest, 0)["api_key"]).startswith("dp:v1:k2:")
    assert str(settings(named, 0)["api_key"]).startswith("dp:v1:k1:")


def test_rotation_then_dropping_the_old_key_keeps_everything_readable() -> None:
    history = [encrypted(encryptor({"k1": K1}), layout()) for _ in range(3)]
    both = encryptor({"k1": K1, "k2": K2})

    rotated = [both.rotate(doc, user_id="alice", layout_id="main") for doc in history]
    only_new = encryptor({"k2": K2})

    assert all(both.needs_rotation(doc) for doc in history)
    assert not any(both.needs_rotation(doc) for doc in rotated)
    assert all(only_new.key_ids_used(doc) == {"k2"} for doc in rotated)
    assert all(
        only_new.decrypt_document(doc, user_id="alice", layout_id="main") == layout()
        for doc in rotated
    )
    assert "k1:" not in repr(rotated)


def test_rotate_encrypts_leftover_plaintext_and_refuses_tampered_fields() -> None:
    fe = encryptor({"k1": K1, "k2": K2})
    sealed = encrypted(fe, layout())
    settings(sealed, 0)["api_key"] = "left in clear"
    tampered = encrypted(fe, layout())
    settings(tampered, 1)["api_key"] = flip_bit(str(settings(tampered, 1)["api_key"]), 20)

    rotated = fe.rotate(sealed, user_id="alice", layout_id="main")

    assert fe.needs_rotation(sealed)
    assert str(settings(rotated, 0)["api_key"]).startswith("dp:v1:k2:")
    with pytest.raises(DecryptionError):
        fe.rotate(tampered, user_id="alice", layout_id="main")


def test_ten_thousand_encryptions_of_one_plaintext_are_all_distinct() -> None:
    fe = encryptor()
    doc: JsonObject = {"metadata": {"secret": "same"}}

    envelopes = [str(encrypted(fe, doc)["metadata"]["secret"]) for _ in range(10_000)]  # type: ignore[index, call-overload]
    nonces = {envelope_nonce(envelope) for envelope in envelopes}

    assert len(set(envelopes)) == 10_000
    assert len(nonces) == 10_000


def envelope_nonce(envelope: str) -> bytes:
    payload = envelope.rpartition(":")[2]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))[:12]


CHILD = """
import sys
from dashpersist.encryption import FieldEncryptor, KeyRing
fe = FieldEncryptor(KeyRing({"k1": bytes(range(32))}), ["metadata.secret"])
for _ in range(500):
    sealed = fe.encrypt_document({"metadata": {"secret": "same"}}, user_id="a", layout_id="b")
    print(sealed["metadata"]["secret"])
"""


def test_two_processes_started_from_the_same_state_never_share_a_nonce() -> None:
    runs = [
        subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
        )
        for _ in range(2)
    ]

    nonces = [{envelope_nonce(line) for line in run.stdout.split()} for run in runs]

    assert len(nonces[0]) == len(nonces[1]) == 500
    assert not nonces[0] & nonces[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_and_its_parent_never_share_a_nonce() -> None:
    fe = encryptor()
    doc: JsonObject = {"metadata": {"secret": "same"}}
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:  # the child: same key ring, same interpreter state
        os.close(read_end)
        lines = "\n".join(str(encrypted(fe, doc)["metadata"]["secret"]) for _ in range(200))  # type: ignore[index, call-overload]
        os.write(write_end, lines.encode())
        os._exit(0)
    os.close(write_end)
    parent = {envelope_nonce(str(encrypted(fe, doc)["metadata"]["secret"])) for _ in range(200)}  # type: ignore[index, call-overload]
    with os.fdopen(read_end) as pipe:
        child = {envelope_nonce(line) for line in pipe.read().split()}
    os.waitpid(pid, 0)

    assert len(child) == 200
    assert not parent & child


# -- key ring -------------------------------------------------------------------------


def test_generated_keys_are_32_random_bytes() -> None:
    keys = {KeyRing.generate_key() for _ in range(10)}

    assert len(keys) == 10
    assert all(len(key) == 32 for key in keys)


def test_from_env_reads_ids_and_keys_and_makes_the_last_primary() -> None:
    unpadded_url_safe = base64.urlsafe_b64encode(K2).decode().rstrip("=")
    env = {"DASHPERSIST_KEYS": f"k1:{base64.b64encode(K1).decode()}, k2:{unpadded_url_safe}"}

    ring = KeyRing.from_env(environ=env)

    assert ring.key_ids == ("k1", "k2")
    assert ring.primary_key_id == "k2"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "k1",
        "k1:not-base64!",
        f"k1:{base64.b64encode(b'short').decode()}",
        f"k1:{base64.b64encode(K1).decode()},k1:{base64.b64encode(K2).decode()}",
    ],
    ids=["empty", "no-colon", "bad-base64", "short-key", "duplicate-id"],
)
def test_from_env_refuses_bad_entries_without_showing_keys(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        KeyRing.from_env("MY_KEYS", environ={"MY_KEYS": value})

    assert "MY_KEYS" in str(caught.value) or "k1" in str(caught.value)
    assert base64.b64encode(K1).decode() not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "primary"),
    [({}, None), ({"k1": b"x" * 16}, None), ({"bad:id": K1}, None), ({"k1": K1}, "k9")],
    ids=["empty", "aes-128", "colon-in-id", "unknown-primary"],
)
def test_invalid_key_rings_are_refused(keys: dict[str, bytes], primary: str | None) -> None:
    with pytest.raises(ConfigurationError):
        KeyRing(keys, primary=primary)


def test_the_key_ring_repr_shows_ids_but_never_keys() -> None:
    ring = KeyRing({"k1": K1, "k2": K2})

    assert repr(ring) == "KeyRing(key_ids=['k1', 'k2'], primary='k2')"
    assert ring.fingerprint("k1") != ring.fingerprint("k2")
    assert K1.hex()[:12] not in ring.fingerprint("k1")


@pytest.mark.parametrize("path", ["widgets[0].x", "widgets[].x", "a..b", "", "a]b"])
def test_invalid_field_paths_are_refused(path: str) -> None:
    with pytest.raises(ConfigurationError):
        FieldEncryptor(KeyRing({"k1": K1}), [path])


def test_fields_marked_encrypted_on_a_model_become_paths() -> None:
    class Credentials(BaseModel):
        password: Annotated[str, Encrypted]
        user: str

    class ChartSettings(BaseModel):
        api_key: Annotated[str, Encrypted] = ""
        logins: list[Credentials] = []
        colour: str = "red"

    paths = encrypted_fields(ChartSettings, prefix="widgets[*].settings")
    fe = FieldEncryptor(KeyRing({"k1": K1}), paths)
    sealed = fe.encrypt_document(
        {
            "widgets": [
                {
                    "id": "w",
                    "settings": {"api_key": "s", "logins": [{"password": "p", "user": "u"}]},
                }
            ]
        },
        user_id="a",
        layout_id="b",
    )

    assert paths == ["widgets[*].settings.api_key", "widgets[*].settings.logins[*].password"]
    assert settings(sealed, 0)["logins"][0]["user"] == "u"
    assert str(settings(sealed, 0)["logins"][0]["password"]).startswith(ENVELOPE_PREFIX)
