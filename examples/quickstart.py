"""dashpersist in two minutes: what `make demo` runs.

It uses the embedded default store (a SQLite file in your user data folder) unless
DASHPERSIST_DEMO_URL names another store, e.g. ``jsonfile:///tmp/layouts``.
"""

from __future__ import annotations

import os
import uuid

from dashpersist import ConflictError, Layout, PersistenceConfig, PersistenceManager, Widget


def main() -> None:
    url = os.environ.get("DASHPERSIST_DEMO_URL")  # None: the embedded default store
    user = f"demo-{uuid.uuid4().hex[:8]}"  # a fresh user, so every run tells the same story
    strict = PersistenceConfig(enable_conflict_resolution=False)

    with PersistenceManager(url, device_id="laptop", config=strict) as laptop:
        print(f"Store: {laptop.storage!r}")

        layout = Layout(
            widgets=[
                Widget(id="revenue", type="chart", title="Revenue", x=0, y=0, w=6, h=4),
                Widget(id="churn", type="metric", title="Churn", x=6, y=0, w=3, h=2),
            ],
            theme="dark",
        )
        first = laptop.save_layout(user, layout, immediate=True, description="First layout")
        print(f"1. Saved {user}'s dashboard as version {first.version} ({first.source}).")

        again = laptop.save_layout(user, layout, immediate=True)
        print(f"2. Saving it unchanged writes nothing: source={again.source!r}, "
              f"still version {again.version}.")

        moved = layout.update_widget("churn", x=0, y=4)  # layouts are immutable: edit copies
        second = laptop.save_layout(user, moved, immediate=True, description="Moved churn")
        print(f"3. Moved a widget: version {second.version}.")

        with PersistenceManager(url, device_id="phone", config=strict) as phone:
            on_phone = phone.load_layout(user)
            assert on_phone is not None
            third = phone.save_layout(
                user, on_phone.with_changes(theme="light"), immediate=True, description="Light theme"
            )
            print(f"4. The phone loaded version {second.version} and saved version {third.version}.")

        stale = moved.update_widget("revenue", title="Revenue (EUR)")
        try:
            laptop.save_layout(user, stale, immediate=True)
        except ConflictError as exc:
            print(f"5. The laptop's save from version {exc.expected_version} is refused: the store "
                  f"is at version {exc.actual_version}. Nothing was overwritten.")

        print("6. History, newest first:")
        for info in laptop.get_version_history(user):
            print(f"   v{info.version}  {info.change_type:<7} {info.device_id:<7} {info.description}")

        laptop.delete_layout(user)
        print(f"7. Deleted the demo user's dashboard; layouts left: {laptop.list_layouts(user)}.")


if __name__ == "__main__":
    main()
