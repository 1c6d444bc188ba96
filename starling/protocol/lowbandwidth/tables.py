"""MSC3079 version 1 tables: CBOR integer keys (Appendix A) and CoAP path enums
(Appendix B), copied from the proposal's text (proposals/3079-low-bandwidth-csapi.md)."""

from __future__ import annotations

# Appendix A: index + 1 is the integer key.
CBOR_KEYS_V1: tuple[str, ...] = (
    "event_id",  # 1
    "type",  # 2
    "content",  # 3
    "state_key",  # 4
    "room_id",  # 5
    "sender",  # 6
    "user_id",  # 7
    "origin_server_ts",  # 8
    "unsigned",  # 9
    "prev_content",  # 10
    "state",  # 11
    "timeline",  # 12
    "events",  # 13
    "limited",  # 14
    "prev_batch",  # 15
    "transaction_id",  # 16
    "age",  # 17
    "redacted_because",  # 18
    "next_batch",  # 19
    "presence",  # 20
    "avatar_url",  # 21
    "account_data",  # 22
    "rooms",  # 23
    "join",  # 24
    "membership",  # 25
    "displayname",  # 26
    "body",  # 27
    "msgtype",  # 28
    "format",  # 29
    "formatted_body",  # 30
    "ephemeral",  # 31
    "invite_state",  # 32
    "leave",  # 33
    "third_party_invite",  # 34
    "is_direct",  # 35
    "hashes",  # 36
    "signatures",  # 37
    "depth",  # 38
    "prev_events",  # 39
    "prev_state",  # 40
    "auth_events",  # 41
    "origin",  # 42
    "creator",  # 43
    "join_rule",  # 44
    "history_visibility",  # 45
    "ban",  # 46
    "events_default",  # 47
    "kick",  # 48
    "redact",  # 49
    "state_default",  # 50
    "users",  # 51
    "users_default",  # 52
    "reason",  # 53
    "visibility",  # 54
    "room_alias_name",  # 55
    "name",  # 56
    "topic",  # 57
    "invite",  # 58
    "invite_3pid",  # 59
    "room_version",  # 60
    "creation_content",  # 61
    "initial_state",  # 62
    "preset",  # 63
    "servers",  # 64
    "identifier",  # 65
    "user",  # 66
    "medium",  # 67
    "address",  # 68
    "password",  # 69
    "token",  # 70
    "device_id",  # 71
    "initial_device_display_name",  # 72
    "access_token",  # 73
    "home_server",  # 74
    "well_known",  # 75
    "base_url",  # 76
    "device_lists",  # 77
    "to_device",  # 78
    "peek",  # 79
    "last_seen_ip",  # 80
    "display_name",  # 81
    "typing",  # 82
    "last_seen_ts",  # 83
    "algorithm",  # 84
    "sender_key",  # 85
    "session_id",  # 86
    "ciphertext",  # 87
    "one_time_keys",  # 88
    "timeout",  # 89
    "recent_rooms",  # 90
    "chunk",  # 91
    "m.fully_read",  # 92
    "device_keys",  # 93
    "failures",  # 94
    "device_display_name",  # 95
    "prev_sender",  # 96
    "replaces_state",  # 97
    "changed",  # 98
    "unstable_features",  # 99
    "versions",  # 100
    "devices",  # 101
    "errcode",  # 102
    "error",  # 103
    "room_alias",  # 104
)

# Appendix B: the enum, then the path template (r0 in the MSC; served as v3, the same
# endpoints).
PATH_ENUMS_V1: dict[str, str] = {
    "0": "/_matrix/client/versions",
    "1": "/_matrix/client/r0/login",
    "2": "/_matrix/client/r0/capabilities",
    "3": "/_matrix/client/r0/logout",
    "4": "/_matrix/client/r0/register",
    "5": "/_matrix/client/r0/user/{userId}/filter",
    "6": "/_matrix/client/r0/user/{userId}/filter/{filterId}",
    "7": "/_matrix/client/r0/sync",
    "8": "/_matrix/client/r0/rooms/{roomId}/state/{eventType}/{stateKey}",
    "9": "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}",
    "A": "/_matrix/client/r0/rooms/{roomId}/event/{eventId}",
    "B": "/_matrix/client/r0/rooms/{roomId}/state",
    "C": "/_matrix/client/r0/rooms/{roomId}/members",
    "D": "/_matrix/client/r0/rooms/{roomId}/joined_members",
    "E": "/_matrix/client/r0/rooms/{roomId}/messages",
    "F": "/_matrix/client/r0/rooms/{roomId}/redact/{eventId}/{txnId}",
    "G": "/_matrix/client/r0/createRoom",
    "H": "/_matrix/client/r0/directory/room/{roomAlias}",
    "I": "/_matrix/client/r0/joined_rooms",
    "J": "/_matrix/client/r0/rooms/{roomId}/invite",
    "K": "/_matrix/client/r0/rooms/{roomId}/join",
    "L": "/_matrix/client/r0/join/{roomIdOrAlias}",
    "M": "/_matrix/client/r0/rooms/{roomId}/leave",
    "N": "/_matrix/client/r0/rooms/{roomId}/forget",
    "O": "/_matrix/client/r0/rooms/{roomId}/kick",
    "P": "/_matrix/client/r0/rooms/{roomId}/ban",
    "Q": "/_matrix/client/r0/rooms/{roomId}/unban",
    "R": "/_matrix/client/r0/directory/list/room/{roomId}",
    "S": "/_matrix/client/r0/publicRooms",
    "T": "/_matrix/client/r0/user_directory/search",
    "U": "/_matrix/client/r0/profile/{userId}/displayname",
    "V": "/_matrix/client/r0/profile/{userId}/avatar_url",
    "W": "/_matrix/client/r0/profile/{userId}",
    "X": "/_matrix/client/r0/voip/turnServer",
    "Y": "/_matrix/client/r0/rooms/{roomId}/typing/{userId}",
    "Z": "/_matrix/client/r0/rooms/{roomId}/receipt/{receiptType}/{eventId}",
    "a": "/_matrix/client/r0/rooms/{roomId}/read_markers",
    "b": "/_matrix/client/r0/presence/{userId}/status",
    "c": "/_matrix/client/r0/sendToDevice/{eventType}/{txnId}",
    "d": "/_matrix/client/r0/devices",
    "e": "/_matrix/client/r0/devices/{deviceId}",
    "f": "/_matrix/client/r0/delete_devices",
    "g": "/_matrix/client/r0/keys/upload",
    "h": "/_matrix/client/r0/keys/query",
    "i": "/_matrix/client/r0/keys/claim",
    "j": "/_matrix/client/r0/keys/changes",
    "k": "/_matrix/client/r0/pushers",
    "l": "/_matrix/client/r0/pushers/set",
    "m": "/_matrix/client/r0/notifications",
    "n": "/_matrix/client/r0/pushrules/",
    "o": "/_matrix/client/r0/search",
    "p": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags",
    "q": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags/{tag}",
    "r": "/_matrix/client/r0/user/{userId}/account_data/{type}",
    "s": "/_matrix/client/r0/user/{userId}/rooms/{roomId}/account_data/{type}",
    "t": "/_matrix/client/r0/rooms/{roomId}/context/{eventId}",
    "u": "/_matrix/client/r0/rooms/{roomId}/report/{eventId}",
}
