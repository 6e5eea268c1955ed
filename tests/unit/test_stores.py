"""Object-storage locations and credentials read as OVMS reads them, and store errors told apart."""

from __future__ import annotations

import pytest

from gateway.core.errors import ConfigError
from gateway.serving.obstore_clients import S3Location, _azure_config, _credentials, _why
from gateway.serving.stores import LocalStore, remote_scheme, store_for


def test_schemes():
    assert remote_scheme("s3://b/p") == "s3" and remote_scheme("GS://b") == "gs"
    assert remote_scheme("/models/resnet") is None and remote_scheme("http://x/y") is None


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("s3://bucket/models/resnet", {}, S3Location("bucket", "models/resnet", None)),
        ("s3://bucket/models/resnet/", {}, S3Location("bucket", "models/resnet", None)),
        ("s3://bucket", {}, S3Location("bucket", "", None)),
        ("s3://minio:9000/bucket/resnet", {}, S3Location("bucket", "resnet", "http://minio:9000")),
        (
            "s3://bucket/resnet",
            {"S3_ENDPOINT": "minio:9000"},
            S3Location("bucket", "resnet", "http://minio:9000"),
        ),
        (
            "s3://bucket/r",
            {"S3_ENDPOINT": "https://s3.example"},
            S3Location("bucket", "r", "https://s3.example"),
        ),
    ],
)
def test_s3_locations(url, environ, expected):
    assert S3Location.parse(url, environ) == expected


def test_credentials_from_keys_a_profile_or_none(tmp_path):
    assert _credentials({}) is None
    assert _credentials({"AWS_ACCESS_KEY_ID": "k"}) is None  # both or neither, as OVMS
    keys = _credentials({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"})
    assert keys == {"access_key_id": "k", "secret_access_key": "s", "session_token": "t"}
    credentials = tmp_path / "credentials"
    credentials.write_text("[ci]\naws_access_key_id = pk\naws_secret_access_key = ps\n")
    environ = {"AWS_PROFILE": "ci", "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    assert _credentials(environ) == {"access_key_id": "pk", "secret_access_key": "ps"}
    assert _credentials({**environ, "AWS_PROFILE": "missing"}) is None


def test_causes_are_told_apart_and_read_the_same_each_time():
    def s3_error(code: str) -> Exception:
        return RuntimeError(f"Generic S3 error: ... in 23.5ms - 404: <Error><Code>{code}</Code></Error>")

    assert _why(s3_error("NoSuchBucket")) == "the bucket does not exist"
    assert _why(s3_error("InvalidAccessKeyId")).startswith("the credentials were refused")
    assert _why(s3_error("SignatureDoesNotMatch")).startswith("the credentials were refused")
    first = _why(
        RuntimeError("Error performing GET http://h/b in 101.9ms - HTTP error: error sending request")
    )
    second = _why(
        RuntimeError("Error performing GET http://h/b in 250.1ms - HTTP error: error sending request")
    )
    assert first.startswith("the endpoint cannot be reached") and first == second


def test_azure_files_is_refused_naming_the_alternative_and_local_paths_stay_local(tmp_path):
    with pytest.raises(ConfigError, match=r"Azure Files \(azfs://\) is not supported.*az://container"):
        store_for("m", "azfs://share/m", str(tmp_path))
    assert isinstance(store_for("m", str(tmp_path), str(tmp_path)), LocalStore)


@pytest.mark.parametrize("url", ["s3://", "gs://", "az://"])
def test_a_url_without_a_bucket_is_a_config_error_naming_the_shape(tmp_path, url):
    with pytest.raises(ConfigError, match=r"expected (s3|gs|az)://"):
        store_for("m", url, str(tmp_path))


def test_azure_connection_strings():
    assert _azure_config({}) == {"skip_signature": True}
    assert _azure_config({"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}) == {
        "use_emulator": True
    }
    full = (
        "DefaultEndpointsProtocol=http;AccountName=acc;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/acc/;"
    )
    expected = {"account_name": "acc", "account_key": "a2V5", "endpoint": "http://127.0.0.1:1/acc"}
    assert _azure_config({"AZURE_STORAGE_CONNECTION_STRING": full}) == expected
    cloud = (
        "DefaultEndpointsProtocol=https;AccountName=acc;SharedAccessSignature=sv=1&sig=x;"
        "EndpointSuffix=core.windows.net"
    )
    expected = {
        "account_name": "acc",
        "sas_key": "sv=1&sig=x",
        "endpoint": "https://acc.blob.core.windows.net",
    }
    assert _azure_config({"AZURE_STORAGE_CONNECTION_STRING": cloud}) == expected


def test_azure_causes():
    def azure_error(code: str) -> Exception:
        return RuntimeError(
            f"Generic MicrosoftAzure error: ... 404: <Error>\n  <Code>{code}</Code>\n</Error>"
        )

    assert _why(azure_error("ContainerNotFound")) == "the container does not exist"
    assert _why(azure_error("AuthorizationFailure")).startswith("the credentials were refused")


def test_only_downloads_of_the_model_cache_are_recognised_as_such(tmp_path):
    from gateway.serving.stores import downloaded_version_folder

    cache = tmp_path / "cache"
    version = cache / "0123456789abcdef" / "3-fedcba9876543210"
    (version / "sub").mkdir(parents=True)
    (version / "model.xml").write_text("x")
    assert downloaded_version_folder(version / "model.xml", str(cache)) == version.resolve()
    assert downloaded_version_folder(version / "sub", str(cache)) == version.resolve()
    mine = tmp_path / "models" / "resnet" / "3"
    mine.mkdir(parents=True)
    assert downloaded_version_folder(mine / "model.xml", str(cache)) is None
    lookalike = tmp_path / "other" / "0123456789abcdef" / "3-fedcba9876543210"
    assert downloaded_version_folder(lookalike / "model.xml", str(cache)) is None
