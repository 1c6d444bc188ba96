-- An invite on the device_lists stream (e2ee/device_lists.py): the room's members hear
-- of the invitee in device_lists.changed, as Synapse counts a user invited in the sync
-- window among those to track (clients encrypt for invited members). Not a join or a
-- leave: joined stays FALSE and no reader of joins and leaves sees these rows.
ALTER TABLE device_list_memberships ADD COLUMN invited BOOLEAN NOT NULL DEFAULT FALSE;
