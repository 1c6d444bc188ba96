"""Assembling the E2EE services (called from starling.app.build_services)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from starling.e2ee.cross_signing import CrossSigningService
from starling.e2ee.device_lists import DeviceListTracker, NotifyUsers
from starling.e2ee.federated_to_device import FederatedToDevice
from starling.e2ee.federation_keys import FederationKeyServer
from starling.e2ee.key_backup import KeyBackupService
from starling.e2ee.keys import E2eKeyService
from starling.e2ee.remote_device_lists import RemoteDeviceLists
from starling.e2ee.sync import DeviceListsExtension, ToDeviceExtension
from starling.e2ee.to_device import ToDeviceService
from starling.ratelimit import RateLimits
from starling.storage.accounts import AccountStore
from starling.storage.e2ee_stores import E2eeStores
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.remote_device_lists import RemoteDeviceListStore


@dataclass
class E2ee:
    keys: E2eKeyService
    cross_signing: CrossSigningService
    to_device: ToDeviceService
    federated_to_device: FederatedToDevice
    federation_keys: FederationKeyServer
    key_backup: KeyBackupService
    device_lists: DeviceListTracker
    # The remote device-list cache and the outbound chain heads (federation).
    device_list_store: RemoteDeviceListStore
    to_device_extension: ToDeviceExtension
    device_lists_extension: DeviceListsExtension
    # Set by the composition root once federation exists.
    remote_device_lists: RemoteDeviceLists | None = None
    # Run at shutdown while the database is still open (drain work after commits).
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build_e2ee(
    server_name: str,
    stores: E2eeStores,
    accounts: AccountStore,
    events: EventStore,
    memberships: MembershipStore,
    notify: NotifyUsers,
    rate_limits: RateLimits | None = None,
) -> E2ee:
    """The services on their own streams ("to_device", "device_lists"). The caller
    subscribes `device_lists.on_new_event` to room events and `keys.devices_changed` to
    device creation/deletion."""

    async def previous_memberships(event_ids: Sequence[str]) -> Mapping[str, str | None]:
        metas = await events.get_events_with_meta(event_ids)
        replaced = {eid: meta.replaces_state for eid, (_, meta) in metas.items()}
        old = await events.get_events([r for r in replaced.values() if r is not None])
        out: dict[str, str | None] = {}
        for eid, prev in replaced.items():
            prev_event = old.get(prev) if prev is not None else None
            out[eid] = prev_event.membership if prev_event is not None else None
        return out

    key_store = stores.keys
    to_device_store = stores.to_device
    tracker = DeviceListTracker(
        stores.writes,
        stores.device_lists,
        stores.device_lists_stream,
        memberships,
        previous_memberships,
        notify,
    )
    keys = E2eKeyService(server_name, stores.writes, key_store, tracker)
    device_list_store = stores.remote_device_lists
    to_device_stream = stores.to_device_stream
    federated_to_device = FederatedToDevice(
        server_name,
        stores.writes,
        stores.federation_to_device,
        to_device_store,
        notify,
    )
    to_device = ToDeviceService(
        server_name,
        stores.writes,
        to_device_store,
        to_device_stream,
        notify,
        remote=federated_to_device,
        rate_limits=rate_limits,
    )
    return E2ee(
        keys=keys,
        cross_signing=CrossSigningService(stores.writes, key_store, accounts, tracker),
        to_device=to_device,
        federated_to_device=federated_to_device,
        federation_keys=FederationKeyServer(
            server_name, keys, accounts, device_list_store.outbound_head
        ),
        key_backup=KeyBackupService(stores.key_backup),
        device_lists=tracker,
        device_list_store=device_list_store,
        to_device_extension=ToDeviceExtension(to_device, keys),
        device_lists_extension=DeviceListsExtension(tracker),
    )
