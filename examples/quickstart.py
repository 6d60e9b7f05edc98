"""dashpersist in two minutes: what `make demo` runs.

It uses the embedded default store (a SQLite file in your user data folder) unless
DASHPERSIST_DEMO_URL names another store, e.g. ``jsonfile:///tmp/layouts``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from dashpersist import (
    KeyRing,
    Layout,
    PersistenceConfig,
    PersistenceManager,
    Widget,
    default_store_url,
)


def main() -> None:
    url = os.environ.get("DASHPERSIST_DEMO_URL") or default_store_url()
    user = f"demo-{uuid.uuid4().hex[:8]}"  # a fresh user, so every run tells the same story
    secret = f"sk-live-{uuid.uuid4().hex}"
    # A real app loads its keys from a secret store: KeyRing.from_env("DASHPERSIST_KEYS").
    keyring = KeyRing({"k1": KeyRing.generate_key()})
    config = PersistenceConfig(enable_encryption=True)

    laptop = PersistenceManager(url, device_id="laptop", config=config, keyring=keyring)
    phone = PersistenceManager(url, device_id="phone", config=config, keyring=keyring)
    with laptop, phone:
        print(f"Store: {url}  (user {user})\n")

        layout = Layout(
            widgets=[
                Widget(
                    id="revenue",
                    type="chart",
                    title="Revenue",
                    x=0,
                    y=0,
                    w=6,
                    h=4,
                    settings={"api_key": secret, "source": "stripe"},
                ),
                Widget(id="churn", type="metric", title="Churn", x=6, y=0, w=3, h=2),
                Widget(id="deals", type="table", title="Deals", x=9, y=0, w=3, h=2),
            ],
            theme="dark",
        )
        first = laptop.save_layout(user, layout, immediate=True, description="First layout")
        print(f"1. The laptop saved the dashboard as version {first.version}.")
        again = laptop.save_layout(user, layout, immediate=True)
        print(f"2. Saving it unchanged writes nothing (source={again.source!r}).")

        on_phone = phone.load_layout(user)
        assert on_phone is not None
        dragged = layout
        for step in range(1, 21):  # a drag: 20 change events in a second
            dragged = dragged.update_widget("churn", x=6 - step % 7, y=step % 5)
            queued = laptop.save_layout(user, dragged)  # autosave: returns at once
        dragged = dragged.update_widget("churn", x=0, y=4)
        laptop.save_layout(user, dragged)
        written = laptop.flush()  # also done by close() and at interpreter exit
        print(f"3. The laptop dragged 'Churn' through 21 positions ({queued.source!r} each);")
        print(f"   autosave wrote {len(written)} version: v{written[0].version}.")
        print("4. The phone, still on version 1, renamed 'Deals'. Its save merges instead")
        print("   of overwriting the laptop's change:")
        merged = phone.save_layout(
            user, on_phone.update_widget("deals", title="Open deals"), immediate=True
        )
        assert merged.merge is not None
        print(f"   version {merged.version}, {len(merged.merge.conflicts)} conflicts.")

        on_phone = phone.load_layout(user)
        on_laptop = laptop.load_layout(user)
        assert on_phone is not None
        assert on_laptop is not None
        laptop.save_layout(
            user, on_laptop.update_widget("revenue", title="Revenue (EUR)"), immediate=True
        )
        both = phone.save_layout(
            user, on_phone.update_widget("revenue", title="Revenue (USD)"), immediate=True
        )
        assert both.merge is not None
        print("5. Both devices retitled 'Revenue'. The merge reports it and keeps both values:")
        for conflict in both.merge.conflicts:
            print(
                f"   {conflict.path}: laptop={conflict.remote!r}, phone={conflict.local!r}"
                f" -> {conflict.chosen!r} ({conflict.reason})"
            )

        diff = laptop.compare_versions(user, 1, both.version or 1)
        print(f"6. From version 1 to {both.version}: {diff.summary}")
        print(f"   as RFC 6902: {len(diff.patch)} operations, e.g. {diff.patch[0]}")

        restored = laptop.rollback_to_version(user, 1)
        history = laptop.get_version_history(user)
        print(
            f"7. Rolled back to version 1's content as version {history[0].version}"
            f" ('{restored.widget('revenue').title}'); history keeps every version:"
        )
        for info in history:
            print(
                f"   v{info.version}  {info.change_type:<19} {info.device_id:<6} {info.description}"
            )

        on_disk = _store_bytes(url)
        if on_disk is not None:
            found = secret.encode() in on_disk
            print(f"8. The API key is encrypted (AES-256-GCM); plaintext in the store: {found}.")
        loaded = laptop.load_layout(user)
        assert loaded is not None
        assert loaded.widget("revenue").settings["api_key"] == secret
        print("   Loading decrypts it again.")

        report = laptop.verify(user)
        print(
            f"9. verify(): {report.versions_checked} versions, checksums and hash chain "
            f"{'intact' if report.ok else 'BROKEN'}."
        )

        laptop.delete_layout(user)
        print(f"\nDeleted the demo dashboard; {user} has {laptop.list_layouts(user)} left.")


def _store_bytes(url: str) -> bytes | None:
    """Return every byte of a file-based store, to show what is (not) on disk."""
    if url.startswith("sqlite:///"):
        base = Path(url.removeprefix("sqlite:///"))
        files = [base, base.with_name(base.name + "-wal")]
    elif url.startswith("jsonfile://"):
        files = [p for p in Path(url.removeprefix("jsonfile://")).rglob("*") if p.is_file()]
    else:
        return None
    return b"".join(path.read_bytes() for path in files if path.exists())


if __name__ == "__main__":
    main()
