"""
Opaque tokens on SQLite are written by group commit
(L{ccserver.stores.groupcommit}): a real server, many tokens at once, then
SIGKILL; every token that was answered is in the file.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from twisted.trial.unittest import SynchronousTestCase

from ccserver.credentials import opaque_token_key
from tests.helpers import basic, temp_dir
from tests.process import CCServerProcess

pytestmark = pytest.mark.process


class AnsweredTokensSurviveSIGKILL(SynchronousTestCase):
    def test_every_answered_token_is_on_disk(self) -> None:
        folder = temp_dir(self)
        db = folder / "ccserver.db"
        config = folder / "ccserver.toml"
        config.write_text('access_log = false\n[tokens]\nformat = "opaque"\n')
        server = CCServerProcess(
            folder, "--config", str(config), "--master-token", "m" * 32, store=f"sqlite:///{db}"
        )
        server.start()
        self.addCleanup(server.kill)
        client = server.register(client_name="gc", scope="read")
        authorization = basic(client["client_id"], client["client_secret"])

        def tokens(count: int) -> list[str]:
            with requests.Session() as session:
                answers = []
                for _ in range(count):
                    response = session.post(
                        server.url + "/token",
                        data={"grant_type": "client_credentials"},
                        headers={"Authorization": authorization},
                        timeout=30,
                    )
                    assert response.status_code == 200, response.text
                    answers.append(response.json()["access_token"])
                return answers

        # 16 connections at once: the writes overlap, so batches form
        with ThreadPoolExecutor(16) as pool:
            answered = [t for batch in pool.map(tokens, [25] * 16) for t in batch]
        server.kill()  # SIGKILL: nothing gets to flush or close
        self.assertEqual(len(set(answered)), 400)
        # read with sqlite3 itself, not the store: the WAL is replayed
        connection = sqlite3.connect(db)
        self.addCleanup(connection.close)
        stored = {row[0] for row in connection.execute("SELECT token_digest FROM access_tokens")}
        missing = [t for t in answered if opaque_token_key(t) not in stored]
        self.assertEqual(missing, [])
