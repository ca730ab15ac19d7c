"""services/config.py in-process: the sources' precedence (arguments > PODIUM_* > YAML > defaults),
how the environment's maps and lists are read, and one-line errors naming the setting and value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.catalog import MODEL_NAMES
from services.config import ConfigError, ServeConfig, config_file, load_config


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PODIUM_* variable from the caller, and a working directory without a podium.yaml."""
    for name in [n for n in os.environ if n.upper().startswith("PODIUM_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load_config()
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 3000, "auto")
    assert config.models == list(MODEL_NAMES)
    assert config.max_batch_size == {} and config.versions == {}  # kinds give the defaults
    assert config.admin_token is None and config.batching is True


def test_precedence_arguments_environment_yaml_defaults(monkeypatch: pytest.MonkeyPatch,
                                                        clean: Path) -> None:
    path = write(clean / "serve.yaml", "port: 4000\nworkers: 3\nmax_latency_ms: 250\n")
    monkeypatch.setenv("PODIUM_PORT", "4001")
    monkeypatch.setenv("PODIUM_WORKERS", "2")
    config = load_config(path, port=4002, host=None)  # None: not given (the CLI's unset flags)
    assert config.port == 4002  # argument > environment
    assert config.workers == 2  # environment > YAML
    assert config.max_latency_ms == 250.0  # YAML > default
    assert config.host == "127.0.0.1"  # default


def test_yaml_file_is_podium_config_else_podium_yaml(monkeypatch: pytest.MonkeyPatch,
                                                     clean: Path) -> None:
    write(clean / "podium.yaml", "port: 4100\n")
    assert config_file() == Path("podium.yaml") and load_config().port == 4100
    named = write(clean / "other.yaml", "port: 4200\n")
    monkeypatch.setenv("PODIUM_CONFIG", str(named))
    assert load_config().port == 4200
    assert load_config(write(clean / "third.yaml", "port: 4300\n")).port == 4300  # path > PODIUM_CONFIG
    assert config_file() == named  # load_config's path does not outlive the call


def test_an_empty_yaml_file_means_defaults(clean: Path) -> None:
    assert load_config(write(clean / "empty.yaml", "")).port == 3000


@pytest.mark.parametrize("raw", ["diabetes,mnist-cnn", '["diabetes", "mnist-cnn"]', " diabetes , mnist-cnn,"])
def test_models_take_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("PODIUM_MODELS", raw)
    assert load_config().models == ["diabetes", "mnist-cnn"]


def test_models_as_a_comma_string_in_yaml_too(clean: Path) -> None:
    assert load_config(write(clean / "p.yaml", "models: char-rnn,diabetes\n")).models == ["char-rnn",
                                                                                          "diabetes"]


def test_maps_from_the_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_VERSIONS", '{"diabetes": "abc", "mnist-cnn": ["v2", "v1"]}')
    monkeypatch.setenv("PODIUM_MAX_BATCH_SIZE", '{"diabetes": 7}')
    config = load_config()
    assert config.pinned("diabetes") == ["abc"] and config.pinned("mnist-cnn") == ["v2", "v1"]
    assert config.pinned("char-rnn") == []
    assert config.max_batch("diabetes", "cpu", 1024) == 7
    assert config.max_batch("mnist-cnn", "cpu", 256) == 256  # not in the map: the kind's default


def test_scalars_and_literals_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"BATCHING": "false", "RUNTIME": "torchscript", "ADMIN_TOKEN": "s3cret",
                        "INTRA_OP_THREADS": "3", "DECODE_THREADS": "2", "ROLLOUT_MAX_ERROR_RATE": "0.5",
                        "TENSORRT_CACHE_DIR": "/tmp/trt"}.items():
        monkeypatch.setenv(f"PODIUM_{name}", value)
    config = load_config()
    assert config.batching is False and config.runtime == "torchscript" and config.admin_token == "s3cret"
    assert config.runtime_threads() == 3 and config.image_decode_threads() == 2
    assert config.rollout_max_error_rate == 0.5 and config.tensorrt_cache_path() == "/tmp/trt"


def test_unknown_podium_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_FOO", "1")
    monkeypatch.setenv("PODIUM_SERVER_VERSION", "v9")  # read by the service, not a setting
    assert load_config().port == 3000


def one_line_error(**kw) -> str:
    path = kw.pop("path", None)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_unknown_yaml_key_and_unknown_argument_are_errors(clean: Path) -> None:
    path = write(clean / "p.yaml", "port: 3001\nprot: 3002\n")
    assert one_line_error(path=path) == f"invalid Podium configuration: prot=3002 ({path}): unknown setting"
    assert "nonsense=1 (argument): unknown setting" in one_line_error(nonsense=1)


@pytest.mark.parametrize(("env", "words"), [
    ({"PODIUM_PORT": "70000"}, ("port=70000 (PODIUM_PORT)", "less than or equal to 65535")),
    ({"PODIUM_WORKERS": "zero"}, ("workers=zero (PODIUM_WORKERS)", "at least 1) or 'auto'")),
    ({"PODIUM_DEVICE": "tpu"}, ("device=tpu (PODIUM_DEVICE)", "'auto', 'cpu' or 'cuda'")),
    ({"PODIUM_VERSIONS": "{nope"}, ("PODIUM_VERSIONS={nope: not JSON",)),
    ({"PODIUM_MAX_BATCH_SIZE": '{"diabetes": "many"}'},
     ("max_batch_size.diabetes=many (PODIUM_MAX_BATCH_SIZE)",)),
    ({"PODIUM_MODELS": "[diabetes"}, ("models=[diabetes (PODIUM_MODELS)", "not a JSON list")),
    ({"PODIUM_MODELS": "diabetes,resnet-50"}, ("unknown models in configuration: ['resnet-50']",)),
    ({"PODIUM_PORT": "0", "PODIUM_BATCH_WAIT_MS": "-1"}, ("port=0", "; batch_wait_ms=-1")),
])
def test_environment_errors_name_setting_and_value(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   words: tuple[str, ...]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    message = one_line_error()
    assert message.startswith(("invalid Podium configuration: ", "unknown models"))
    for word in words:
        assert word in message


def test_yaml_errors_are_one_line(clean: Path) -> None:
    path = write(clean / "list.yaml", "- port\n- 3000\n")
    assert one_line_error(path=path) == f"{path}: expected a mapping of settings, got list"
    broken = write(clean / "broken.yaml", "port: [3000\n")
    assert one_line_error(path=broken).startswith(f"{broken}: not valid YAML: ")
    bounded = write(clean / "bounded.yaml", "max_request_bytes: 12\n")
    assert f"max_request_bytes=12 ({bounded}): Input should be greater than or equal to 1024" in \
        one_line_error(path=bounded)


def test_a_long_value_is_clipped_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_PORT", "9" * 5000)
    assert len(one_line_error()) < 300


def test_serve_config_is_itself_a_settings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_TOP_K_DEFAULT", "5")
    assert ServeConfig().top_k_default == 5 and ServeConfig(top_k_default=2).top_k_default == 2
