"""The stores and streams behind the E2EE services, opened together by the composition
root (starling.app) and handed to starling.e2ee.services.build_e2ee."""

from __future__ import annotations

from dataclasses import dataclass

from starling.storage.database import Database
from starling.storage.device_lists import DeviceListStore
from starling.storage.e2e_keys import E2eKeyStore
from starling.storage.e2ee_writes import E2eeWrites
from starling.storage.federation_to_device import FederationToDeviceStore
from starling.storage.key_backup import KeyBackupStore
from starling.storage.remote_device_lists import RemoteDeviceListStore
from starling.storage.streams import StreamIdGenerator
from starling.storage.to_device import ToDeviceStore


@dataclass(frozen=True)
class E2eeStores:
    keys: E2eKeyStore
    to_device: ToDeviceStore
    to_device_stream: StreamIdGenerator
    device_lists: DeviceListStore
    device_lists_stream: StreamIdGenerator
    remote_device_lists: RemoteDeviceListStore
    federation_to_device: FederationToDeviceStore
    key_backup: KeyBackupStore
    # The writes spanning several of the tables above.
    writes: E2eeWrites

    @classmethod
    async def open(cls, db: Database) -> E2eeStores:
        keys = E2eKeyStore(db)
        to_device = ToDeviceStore(db)
        device_lists = DeviceListStore(db)
        to_device_stream = await StreamIdGenerator.create(db, "to_device")
        device_lists_stream = await StreamIdGenerator.create(db, "device_lists")
        federation_to_device = FederationToDeviceStore(db)
        return cls(
            keys=keys,
            to_device=to_device,
            to_device_stream=to_device_stream,
            device_lists=device_lists,
            device_lists_stream=device_lists_stream,
            remote_device_lists=RemoteDeviceListStore(db),
            federation_to_device=federation_to_device,
            key_backup=KeyBackupStore(db),
            writes=E2eeWrites(
                db,
                keys,
                to_device,
                device_lists,
                device_lists_stream,
                to_device_stream,
                federation_to_device,
            ),
        )
