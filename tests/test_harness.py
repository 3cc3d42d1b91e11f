"""The harness itself: offline switches and the network guard."""

import socket
import urllib.request

import pytest
from conftest import NetworkAccessError


def test_hub_client_refuses_downloads_before_the_socket_guard(tmp_path):
    """huggingface_hub read HF_HUB_OFFLINE (it reads it once, at import: a plugin importing it before
    conftest would leave it online) and refuses a download itself; the guard below is not what stopped it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(Exception) as info:
        hf_hub_download("openai/clip-vit-large-patch14", "config.json", cache_dir=tmp_path)
    causes, error = [], info.value
    while error is not None:
        causes.append(type(error))
        error = error.__cause__ or error.__context__
    assert OfflineModeIsEnabled in causes and NetworkAccessError not in causes, causes


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
