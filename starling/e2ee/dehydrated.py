"""Dehydrated devices (MSC3814, which Element uses), at Synapse's unstable prefix
`/_matrix/client/unstable/org.matrix.msc3814.v1`:

- `PUT /dehydrated_device` {device_id, device_data, initial_device_display_name,
  device_keys, one_time_keys, fallback_keys}: the client's new dehydrated device. The
  device is created (no access token), its keys go through the ordinary key upload (so
  the user's other devices and peers see it in the device list and share room keys with
  it), `device_data` (the client's encrypted pickle, opaque here) is kept, and the
  user's previous dehydrated device is deleted. At most one per user.
- `GET /dehydrated_device`: {device_id, device_data}, or 404 M_NOT_FOUND.
- `DELETE /dehydrated_device`: deletes it (device, keys and messages); {device_id}.
- `GET /dehydrated_device/{deviceId}/events?from=` (and the MSC's earlier
  `POST` with {next_batch}): the to-device messages sent to it, oldest first, a page at a
  time; `from` is the previous page's `next_batch` and deletes what that page carried.
  A page with no events has no `next_batch` (matrix-js-sdk loops until it is absent).

Only the device's owner reaches any of these; the device ID of `/events` must be their
dehydrated device. A dehydrated device deleted through /delete_devices is forgotten.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from starling.e2ee.keys import E2eKeyService
from starling.e2ee.to_device import ToDeviceService
from starling.errors import (
    MatrixError,
    bad_json,
    forbidden,
    invalid_param,
    missing_param,
    not_found,
)
from starling.storage.dehydrated_devices import DehydratedDeviceStore

MAX_DEVICE_ID_LENGTH = 255
MAX_DEVICE_DATA_BYTES = 64 * 1024
MAX_DISPLAY_NAME_LENGTH = 100
EVENTS_PER_PAGE = 100
_KEY_FIELDS = ("device_keys", "one_time_keys", "fallback_keys")

CreateDevice = Callable[[str, str, str | None], Awaitable[bool]]  # user, device, name
DeleteDevices = Callable[[str, Sequence[str]], Awaitable[list[str]]]
DeviceExists = Callable[[str, str], Awaitable[bool]]


def _device_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_json("'device_id' must be a non-empty string")
    if len(value) > MAX_DEVICE_ID_LENGTH or not value.isprintable():
        raise invalid_param("'device_id' is not a valid device ID")
    return value


class DehydratedDevices:
    def __init__(
        self,
        store: DehydratedDeviceStore,
        keys: E2eKeyService,
        to_device: ToDeviceService,
        create_device: CreateDevice,
        delete_devices: DeleteDevices,
        device_exists: DeviceExists,
    ) -> None:
        self._store = store
        self._keys = keys
        self._to_device = to_device
        self._create_device = create_device
        self._delete_devices = delete_devices
        self._device_exists = device_exists

    async def put(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if "device_id" not in body or "device_data" not in body:
            raise missing_param("'device_id' and 'device_data' are required")
        device_id = _device_id(body["device_id"])
        data = body["device_data"]
        if not isinstance(data, dict):
            raise bad_json("'device_data' must be an object")
        if len(orjson.dumps(data)) > MAX_DEVICE_DATA_BYTES:
            raise MatrixError(400, "M_TOO_LARGE", "'device_data' is too large")
        name = body.get("initial_device_display_name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME_LENGTH):
            raise invalid_param("'initial_device_display_name' must be a short string")
        for field in _KEY_FIELDS:
            if field in body and not isinstance(body[field], dict):
                raise bad_json(f"'{field}' must be an object")
        current = await self._store.get(user_id)
        if await self._device_exists(user_id, device_id) and (
            current is None or current[0] != device_id
        ):
            # Never turn one of the user's live devices into a dehydrated one.
            raise invalid_param(f"Device {device_id} already exists")
        created = await self._create_device(user_id, device_id, name)
        try:
            await self._keys.upload(
                user_id, device_id, {k: body[k] for k in _KEY_FIELDS if k in body}
            )
        except MatrixError:
            if created:
                await self._delete_devices(user_id, [device_id])
            raise
        replaced = await self._store.set(user_id, device_id, data)
        if replaced is not None:
            await self._delete_devices(user_id, [replaced])
        return {"device_id": device_id}

    async def get(self, user_id: str) -> dict[str, Any]:
        found = await self._store.get(user_id)
        if found is None:
            raise not_found("No dehydrated device")
        return {"device_id": found[0], "device_data": found[1]}

    async def delete(self, user_id: str) -> dict[str, Any]:
        device_id = await self._store.delete(user_id)
        if device_id is None:
            raise not_found("No dehydrated device")
        await self._delete_devices(user_id, [device_id])
        return {"device_id": device_id}

    async def events(self, user_id: str, device_id: str, next_batch: Any) -> dict[str, Any]:
        found = await self._store.get(user_id)
        if found is None or found[0] != device_id:
            raise forbidden("That is not your dehydrated device")
        after: int | None = None
        if next_batch is not None:
            if (
                not isinstance(next_batch, str)
                or not next_batch.isascii()
                or not next_batch.isdigit()
                or len(next_batch) > 18
            ):
                raise invalid_param("'next_batch' is not a token this server gave")
            after = int(next_batch)
        page = await self._to_device.messages_after(user_id, device_id, after, EVENTS_PER_PAGE)
        out: dict[str, Any] = {"events": [message for _, message in page]}
        if page:
            out["next_batch"] = str(page[-1][0])
        return out

    async def devices_changed(self, user_id: str, device_ids: Sequence[str], deleted: bool) -> None:
        """A device listener: a dehydrated device deleted some other way is forgotten."""
        if deleted:
            for device_id in device_ids:
                await self._store.delete(user_id, device_id)
