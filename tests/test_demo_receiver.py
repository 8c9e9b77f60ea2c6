"""Check the demo receiver that the README's tour uses."""

import subprocess
import sys

import requests

from tests.support.redis_server import free_port


def test_prints_webhook_and_answers_status():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pdauto.demo_receiver", "--port", str(port), "--status", "202"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "responds 202" in process.stdout.readline()
        response = requests.post(
            f"http://127.0.0.1:{port}/hook",
            json={"trigger": "Deal won"},
            headers={"webhook-id": "msg_1"},
            timeout=5,
        )
        printed = [process.stdout.readline() for _ in range(4)]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()

    assert response.status_code == 202
    assert printed[0] == "POST /hook\n"
    assert "  webhook-id: msg_1\n" in printed
    assert printed[-1] == '  body: {"trigger": "Deal won"}\n'
