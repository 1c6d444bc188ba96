-- Third-party IDs a user bound to an identity server through this homeserver (POST
-- /account/3pid/bind): the spec asks the homeserver to track them so that they can be
-- unbound later (/account/3pid/unbind, /account/3pid/delete, deactivation).
CREATE TABLE user_threepid_id_server (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);
