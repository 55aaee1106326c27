"""The load test's notes name the stores its Hubbub serves from (the JSON report's ``notes``)."""

from __future__ import annotations

from hubbub.loadtest.servers import store_of


def test_the_note_names_the_stores_the_settings_choose() -> None:
    assert store_of({}) == "SQLite in a temp dir"
    assert store_of({"HUBBUB_POSTGRES_DSN": "postgresql://db/x"}) == "accounts on postgres, messages on postgres"
    mongo = {"HUBBUB_POSTGRES_DSN": "postgresql://db/x", "HUBBUB_MONGO_URL": "mongodb://m"}
    assert store_of(mongo) == "accounts on postgres, messages on mongo"
    assert store_of({"HUBBUB_MESSAGES_BACKEND": "postgres", "HUBBUB_ACCOUNTS_BACKEND": "postgres"}) == (
        "accounts on postgres, messages on postgres"
    )
