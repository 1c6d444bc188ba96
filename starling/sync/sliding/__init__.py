"""Simplified sliding sync (MSC4186), served at
POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync as Synapse serves it.

- `request`: the request body, validated into plain data (bad input is a Matrix error);
- `connections`: per-connection state (what each connection has been sent), behind `pos`;
- `room_list`: the user's rooms ordered by recency, list filters and ranges;
- `rooms`: each room's result (timeline, required_state, name, counts, invite state);
- `extensions`: to_device, e2ee, account_data, receipts and typing, from the /sync
  extensions' streams;
- `service`: one request, and the long-poll.
"""
