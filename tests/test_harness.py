"""The harness itself: offline switches and the network guard."""

import os
import socket
import urllib.request

import pytest
from conftest import NetworkAccessError


def test_offline_switches_are_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_connection_to_public_address_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkAccessError):
        s.connect(("93.184.216.34", 443))


def test_name_lookup_fails():
    with pytest.raises(NetworkAccessError):
        socket.getaddrinfo("huggingface.co", 443)


def test_http_request_fails():
    with pytest.raises(Exception) as info:
        urllib.request.urlopen("https://huggingface.co/api/models", timeout=5)
    assert "must not use the network" in str(info.value)


def test_loopback_stays_open():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())
            conn, _ = server.accept()
            conn.close()
