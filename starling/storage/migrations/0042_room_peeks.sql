-- Peeking (MSC2753, rooms/peeks.py): a device that peeks into a world-readable room gets it
-- under rooms.peek in its /sync until it stops peeking or joins. stream_id is the room's
-- place on the "peeks" stream: /sync sends the whole room to a token from before it.
CREATE TABLE room_peeks (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id)
);
CREATE INDEX room_peeks_room ON room_peeks (room_id, user_id);
