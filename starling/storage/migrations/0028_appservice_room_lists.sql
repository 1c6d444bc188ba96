-- The room lists application services publish for their networks
-- (PUT /directory/list/appservice/{networkId}/{roomId}); /publicRooms shows one with
-- third_party_instance_id "<service id>|<network id>", all of them with
-- include_all_networks. A room may be on any of them and on the main list.
CREATE TABLE appservice_room_list (
    as_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (as_id, network_id, room_id)
);
