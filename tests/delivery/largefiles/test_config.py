from __future__ import annotations

import re
from typing import Any

import pytest

from tenants.large_files import validate_large_file_config

DEFAULTS = {"enabled": False, "max_size_mb": 10, "storage_url": "", "public_base_url": "",
            "file_ttl_days": 30, "action": "warn"}


def test_empty_config_gets_every_default() -> None:
    assert validate_large_file_config({}) == DEFAULTS


def test_nulls_count_as_absent() -> None:
    assert validate_large_file_config({"storage_url": None, "public_base_url": None}) == DEFAULTS


def test_full_config_is_kept_and_base_url_loses_its_trailing_slash() -> None:
    config = {"enabled": True, "max_size_mb": 2.5, "storage_url": "file:///srv/mail-proxy/files",
              "public_base_url": "https://proxy.example.com/", "file_ttl_days": 7, "action": "rewrite"}
    assert validate_large_file_config(config) == {**config, "public_base_url": "https://proxy.example.com"}


@pytest.mark.parametrize("url", [
    "s3://bucket",
    "s3://bucket/some/prefix",
    "s3://my.bucket-1/prefix/?endpoint_url=http://127.0.0.1:5000",
    "gs://bucket_name/prefix",
    "az://container/prefix",
    "file:///var/lib/mail-proxy/files",
])
def test_storage_urls_accepted(url: str) -> None:
    assert validate_large_file_config({"enabled": True, "action": "rewrite", "storage_url": url,
                                       "public_base_url": "http://proxy.local"})["storage_url"] == url


def test_input_is_not_changed() -> None:
    value = {"action": "reject"}
    validate_large_file_config(value)
    assert value == {"action": "reject"}


@pytest.mark.parametrize(("value", "message"), [
    ({"enabled": True, "colour": "red"}, "unknown key 'colour'"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"enabled": 1}, "enabled must be true or false"),
    ({"max_size_mb": 0}, "max_size_mb must be a number greater than 0"),
    ({"max_size_mb": -1.5}, "max_size_mb must be a number greater than 0"),
    ({"max_size_mb": "10"}, "max_size_mb must be a number greater than 0"),
    ({"max_size_mb": True}, "max_size_mb must be a number greater than 0"),
    ({"max_size_mb": float("nan")}, "max_size_mb must be a number greater than 0"),
    ({"max_size_mb": float("inf")}, "max_size_mb must be a number greater than 0"),
    ({"file_ttl_days": 0}, "file_ttl_days must be a whole number from 1 to 3650"),
    ({"file_ttl_days": 1.5}, "file_ttl_days must be a whole number from 1 to 3650"),
    ({"file_ttl_days": True}, "file_ttl_days must be a whole number from 1 to 3650"),
    ({"file_ttl_days": 3651}, "file_ttl_days must be a whole number from 1 to 3650"),
    ({"action": "drop"}, "action must be warn, reject or rewrite"),
    ({"storage_url": 5}, "storage_url must be a string"),
    ({"public_base_url": ["x"]}, "public_base_url must be a string"),
])
def test_bad_values_are_refused_naming_the_key(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        validate_large_file_config(value)


def test_not_a_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="large_file_config must be an object"):
        validate_large_file_config(["enabled"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://bucket/prefix", "must start with one of s3://, gs://, az://, file://"),
    ("s3:bucket", "must start with one of"),
    ("bucket/prefix", "must start with one of"),
    ("s3://", "must name a bucket or container"),
    ("s3://Bucket/prefix", "must name a bucket or container"),
    ("s3://b/prefix", "must name a bucket or container"),
    ("s3://key:secret@bucket/prefix", "must not carry credentials or a port"),
    ("az://container:443/prefix", "must not carry credentials or a port"),
    ("s3://bucket/a/../b", "must not contain '.' or '..' path segments"),
    ("s3://bucket/prefix#x", "must not have a #fragment"),
    ("gs://bucket/prefix?endpoint_url=http://127.0.0.1", "must not have a query for gs://"),
    ("az://container/prefix?x=1", "must not have a query for az://"),
    ("s3://bucket/prefix?region=eu-west-1", "query may only set endpoint_url, once"),
    ("s3://bucket/p?endpoint_url=http://a&endpoint_url=http://b", "query may only set endpoint_url, once"),
    ("s3://bucket/p?endpoint_url=ftp://host", "endpoint_url must be an http:// or https:// URL"),
    ("s3://bucket/p?endpoint_url=http://u:p@host", "endpoint_url must be an http:// or https:// URL"),
    ("file://host/dir", "must be file:///absolute/dir"),
    ("file:///", "must name an absolute directory other than '/'"),
    ("file:///srv/files?x=1", "must not have a query for file://"),
    ("file:///srv/../etc", "must not contain '.' or '..' path segments"),
])
def test_bad_storage_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^storage_url") as caught:
        validate_large_file_config({"storage_url": url})
    assert message in str(caught.value)


@pytest.mark.parametrize(("url", "message"), [
    ("proxy.example.com", "must be an http:// or https:// URL with a host"),
    ("ftp://proxy.example.com", "must be an http:// or https:// URL with a host"),
    ("https://", "must be an http:// or https:// URL with a host"),
    ("https://user:pw@proxy.example.com", "must not carry credentials"),
    ("https://proxy.example.com/?a=1", "must not have a query or #fragment"),
    ("https://proxy.example.com/#top", "must not have a query or #fragment"),
])
def test_bad_public_base_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^public_base_url") as caught:
        validate_large_file_config({"public_base_url": url})
    assert message in str(caught.value)


def test_rewrite_needs_a_storage_url() -> None:
    with pytest.raises(ValueError, match=r"^storage_url is required when action is rewrite"):
        validate_large_file_config({"enabled": True, "action": "rewrite"})


def test_rewrite_to_file_store_needs_a_public_base_url() -> None:
    with pytest.raises(ValueError, match=r"^public_base_url is required for a file:// storage_url"):
        validate_large_file_config({"enabled": True, "action": "rewrite", "storage_url": "file:///srv/files"})


def test_cloud_rewrite_needs_no_public_base_url() -> None:
    config = validate_large_file_config({"enabled": True, "action": "rewrite", "storage_url": "s3://bucket/p"})
    assert config["public_base_url"] == ""


def test_requirements_apply_only_when_enabled() -> None:
    assert validate_large_file_config({"enabled": False, "action": "rewrite"})["action"] == "rewrite"
    assert validate_large_file_config({"enabled": True, "action": "warn"})["storage_url"] == ""
