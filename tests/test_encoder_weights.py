"""``--encoder-weights``: pretrained encoders for the smp baselines, fetched once before training.

No test needs the network: smp fetches its encoders' weights from the Hugging Face Hub, so a
loopback server on 127.0.0.1 speaking the Hub's download protocol (a HEAD answering the
commit, ETag and size, then a GET) stands in for it, with ``huggingface_hub`` pointed at it
and at a cache under ``tmp_path``. The real Hub, unreachable here, fails the same way as a
closed loopback port, only after huggingface_hub's retries (about 25 s); the tests skip the
retries' sleeps instead of waiting them out.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import architectures
import bench.cli
from bench.config import RunConfig, build_config, values_from_args
from bench.errors import ArchitectureError, ConfigError

ENCODER = "resnet18"
WIDTH = 0.25


@dataclass
class Hub:
    """A loopback stand-in for the Hugging Face Hub: ``files`` maps a URL path to its bytes."""

    url: str
    cache: Path
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


class _HubHandler(BaseHTTPRequestHandler):
    hub: Hub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        self.hub.requests.append(f"{self.command} {self.path}")
        content = self.hub.files.get(self.path)
        if content is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        commit = self.path.split("/resolve/")[1].split("/")[0]
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, url: str, cache: Path) -> None:
    """Make huggingface_hub download from ``url`` into ``cache`` (its settings are read at
    import, from HF_ENDPOINT and HF_HUB_CACHE, so the module's values are replaced)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub also asks the endpoint for a registry it caches under HF_HOME
    monkeypatch.setattr(
        constants, "AGENT_HARNESSES_PATH", str(cache / "agents.json"), raising=False
    )


def _no_retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip the sleeps between huggingface_hub's retries; return the list of their lengths."""
    from huggingface_hub.utils import _http

    slept: list[float] = []
    monkeypatch.setattr(_http.time, "sleep", slept.append)
    return slept


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A loopback hub serving nothing yet, with huggingface_hub pointed at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    state = Hub(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "hf-cache")
    server.RequestHandlerClass = type("Handler", (_HubHandler,), {"hub": state})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, state.url, state.cache)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _serve_encoder_weights(hub: Hub, encoder: str = ENCODER, weights: str = "imagenet") -> dict:
    """Put ``encoder``'s ``weights`` on the hub, as smp fetches them: a recognisable state
    dict (conv1's weights count up from 0) in model.safetensors, beside a config.json."""
    from safetensors.torch import save
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    state = get_encoder(encoder, weights=None).state_dict()
    conv1 = state["conv1.weight"]
    state["conv1.weight"] = torch.arange(conv1.numel(), dtype=conv1.dtype).reshape(conv1.shape)
    settings = encoders[encoder]["pretrained_settings"][weights]
    base = f"/{settings['repo_id']}/resolve/{settings['revision']}"
    hub.files[f"{base}/config.json"] = json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}).encode()
    hub.files[f"{base}/model.safetensors"] = save(state)
    return state


def _closed_port() -> int:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- configuration


def test_architecture_options_record_the_encoder_weights() -> None:
    assert architectures.architecture_options("smp_unet", ENCODER, "imagenet") == {
        "encoder": ENCODER,
        "encoder_weights": "imagenet",
    }
    # default: random initialisation, said explicitly
    assert architectures.architecture_options("smp_fpn", ENCODER) == {
        "encoder": ENCODER,
        "encoder_weights": None,
    }
    assert architectures.architecture_options("unet_thesis", ENCODER, "imagenet") == {}


def test_encoder_weights_is_a_flag_and_a_config_key(tmp_path: Path) -> None:
    assert RunConfig().encoder_weights is None
    config = build_config({"architectures": ("smp_unet",), "encoder_weights": "imagenet"})
    assert config.to_dict()["encoder_weights"] == "imagenet"  # so config.json records it
    toml = tmp_path / "run.toml"
    toml.write_text('architectures = ["smp_unet"]\nencoder-weights = "imagenet"\n')
    assert build_config({}, str(toml)).encoder_weights == "imagenet"
    with pytest.raises(ConfigError, match="--encoder-weights must be a weights name"):
        build_config({"architectures": ("smp_unet",), "encoder_weights": " "})
    args = bench.cli.build_parser().parse_args(["run", "smp_unet", "--encoder-weights", "imagenet"])
    assert values_from_args(args, RunConfig)["encoder_weights"] == "imagenet"


# --------------------------------------------------------------------------- fetching once


def test_weights_from_the_hub_load_into_the_encoder(hub: Hub) -> None:
    served = _serve_encoder_weights(hub)
    architectures.check_encoder_weights(["unet_thesis", "smp_unet"], ENCODER, "imagenet")
    fetched = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert [r.rsplit("/", 1)[1] for r in fetched] == ["config.json", "model.safetensors"]
    assert list(hub.cache.rglob("model.safetensors"))  # in the cache now

    model = architectures.build(
        "smp_unet", width=WIDTH, encoder=ENCODER, encoder_weights="imagenet"
    )
    encoder = model.model.encoder
    assert torch.equal(encoder.conv1.weight.detach(), served["conv1.weight"])
    assert torch.equal(encoder.layer4[1].bn2.running_var, served["layer4.1.bn2.running_var"])
    random_init = architectures.build("smp_unet", width=WIDTH, encoder=ENCODER)
    assert not torch.equal(random_init.model.encoder.conv1.weight, served["conv1.weight"])
    # the model's build read the cache: no second download
    assert [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r] == fetched


def test_cached_weights_load_without_network(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _serve_encoder_weights(hub)
    architectures.check_encoder_weights(["smp_fpn"], ENCODER, "imagenet")
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}", hub.cache)  # hub gone
    slept = _no_retry_sleeps(monkeypatch)
    architectures.check_encoder_weights(["smp_fpn"], ENCODER, "imagenet")
    model = architectures.build("smp_fpn", width=WIDTH, encoder=ENCODER, encoder_weights="imagenet")
    assert torch.equal(model.model.encoder.conv1.weight.detach(), served["conv1.weight"])
    assert slept == []  # a pinned revision in the cache is not even looked up


# --------------------------------------------------------------------------- failing clearly


def test_no_network_is_one_clear_error_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}", cache)
    slept = _no_retry_sleeps(monkeypatch)
    with pytest.raises(ArchitectureError) as info:
        architectures.check_encoder_weights(["smp_unet", "smp_fpn"], ENCODER, "imagenet")
    message = str(info.value)
    assert message.startswith(
        "cannot download imagenet weights for resnet18 (no network?): run once with network "
        f"access to fill the cache at {cache}"
    )
    assert "ConnectError" in message  # the cause, beside huggingface_hub's own words
    assert "leave out --encoder-weights" in message
    assert slept, "huggingface_hub retries a refused connection (about 25 s unpatched)"

    # a model built anyway (the Python API) says the same, naming the architecture
    with pytest.raises(ArchitectureError, match=r"^smp_unet: cannot download imagenet weights"):
        architectures.build("smp_unet", width=WIDTH, encoder=ENCODER, encoder_weights="imagenet")


def test_offline_mode_is_the_same_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    _point_hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}", tmp_path / "hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1
    with pytest.raises(ArchitectureError, match="cannot download imagenet weights for resnet18"):
        architectures.check_encoder_weights(["smp_unet"], ENCODER, "imagenet")


def test_a_hub_refusing_the_file_is_a_download_error(hub: Hub) -> None:
    # nothing served: the hub answers 404 (a proxy or mirror without the file)
    with pytest.raises(ArchitectureError, match="cannot download imagenet weights for resnet18"):
        architectures.check_encoder_weights(["smp_unet"], ENCODER, "imagenet")


def test_weights_the_encoder_lacks_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArchitectureError, match=r"no 'ssl' weights; available: imagenet"):
        architectures.check_encoder_weights(["smp_unet"], "resnet34", "ssl")


def test_nothing_is_fetched_without_weights_or_smp_baselines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import segmentation_models_pytorch.encoders as smp_encoders

    def never(*args: object, **kwargs: object) -> str:
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", never)
    architectures.check_encoder_weights(["smp_unet"], ENCODER, None)
    architectures.check_encoder_weights(["unet_thesis", "segnet_basic"], ENCODER, "imagenet")


def test_predict_rebuilds_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained cell's checkpoint holds every weight: bench predict never fetches any."""
    import segmentation_models_pytorch.encoders as smp_encoders

    from bench.predict import TrainedCell, rebuild_model
    from bench.run_dir import RunDir

    trained = architectures.build("smp_unet", width=WIDTH, encoder=ENCODER)

    def never(*args: object, **kwargs: object) -> str:
        raise AssertionError("bench predict must not download weights")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", never)
    meta = {
        "config": {"width": WIDTH, "plugins": []},
        "dataset": {"class_names": ["background", "cytoplasm", "nucleus"]},
        "architectures": {
            "smp_unet": {"options": {"encoder": ENCODER, "encoder_weights": "imagenet"}}
        },
    }
    cell = TrainedCell(RunDir(tmp_path), meta, tmp_path / "c.pt", "smp_unet", 0, 0)
    model = rebuild_model(cell, trained.state_dict())
    assert torch.equal(model.model.encoder.conv1.weight, trained.model.encoder.conv1.weight)
