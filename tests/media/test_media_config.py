"""The media repository's configuration keys: defaults and validation."""

from __future__ import annotations

from typing import Any

import pytest

from starling.config import ConfigError, load_config_dict, parse_duration


def _load(**keys: Any) -> Any:
    return load_config_dict({"server_name": "example.org", **keys}, environ={})


def test_defaults() -> None:
    cfg = _load()
    assert cfg.enable_authenticated_media is True
    assert cfg.url_preview_enabled is False
    assert cfg.dynamic_thumbnails is False
    assert [(s.width, s.height, s.method) for s in cfg.thumbnail_sizes] == [
        (32, 32, "crop"),
        (96, 96, "crop"),
        (320, 240, "scale"),
        (640, 480, "scale"),
        (800, 600, "scale"),
    ]
    assert cfg.media_upload_limits == []
    assert parse_duration(cfg.unused_expiration_time) == 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"url_preview_url_blacklist": [{"host": "x"}]}, "unknown URL part"),
        ({"url_preview_url_blacklist": [{"path": "^("}]}, "url_preview_url_blacklist[0].path"),
        ({"url_preview_url_blacklist": [{}]}, "url_preview_url_blacklist[0]"),
        ({"url_preview_ip_range_whitelist": ["nope"]}, "not an IP range"),
        ({"url_preview_ip_range_blacklist": ["10.0.0.0/33"]}, "not an IP range"),
        ({"unused_expiration_time": "soon"}, "unused_expiration_time"),
        ({"max_image_pixels": 0}, "max_image_pixels"),
        ({"max_spider_size": "lots"}, "max_spider_size"),
        ({"thumbnail_sizes": [{"width": 0, "height": 1}]}, "thumbnail_sizes[0]"),
        ({"thumbnail_sizes": [{"method": "stretch"}]}, "thumbnail_sizes[0].method"),
        ({"media_upload_limits": [{"time_period": "x"}]}, "media_upload_limits[0]"),
        ({"max_pending_media_uploads": 0}, "max_pending_media_uploads"),
    ],
)
def test_invalid(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _load(**keys)


def test_durations() -> None:
    assert parse_duration("30s") == 30_000
    assert parse_duration("2h") == 7_200_000
    assert parse_duration("1w") == 7 * 86_400_000
    assert parse_duration(1500) == 1500
    with pytest.raises(ValueError):
        parse_duration("1 fortnight")
