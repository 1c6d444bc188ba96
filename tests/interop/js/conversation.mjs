// matrix-js-sdk against a real `starling serve`, driven by tests/interop/test_js_sdk.py.
//
//   node conversation.mjs http://127.0.0.1:PORT   (or STARLING_URL=... node conversation.mjs)
//
// Two users register (the m.login.dummy flow) and log in with a password; Alice creates a
// room and invites Bob; Bob's sync loop sees the invite and he joins; messages go both ways
// and each user's sync loop delivers the other's, in order; Alice's new display name reaches
// Bob; a fresh client of Bob's pages back to the room's creation. Every step is asserted
// here; on success the only thing on stdout is one line of JSON for pytest to check again,
// on failure the script exits non-zero with the reason on stderr. No crypto.

import "./node22.mjs";
import assert from "node:assert/strict";

import {
    ClientEvent,
    createClient,
    Direction,
    EventType,
    MatrixError,
    RoomEvent,
    RoomMemberEvent,
    SyncState,
} from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const BASE_URL = process.argv[2] ?? process.env.STARLING_URL;
const PASSWORD = "correct horse battery staple";
const MESSAGES_EACH = 10; // per direction, interleaved
const WAIT_MS = 15_000; // for any one thing to reach the other user
const OVERALL_MS = 50_000;

// The SDK logs through loglevel onto console.log (stdout): keep stdout for the result.
logger.setLevel(process.env.JS_SDK_LOG_LEVEL ?? "warn");
console.log = console.info = console.debug = console.error;

function fail(message) {
    process.stderr.write(`FAIL: ${message}\n`);
    process.exit(1);
}

const overall = setTimeout(() => fail(`not done within ${OVERALL_MS} ms`), OVERALL_MS);

/** Resolve with `check(...args)`'s first truthy result for any of `events` (a name or a
 * list) on `emitter`, or with `now()`'s if that is already truthy; reject after WAIT_MS (with
 * `detail()` if given). */
function waitFor(emitter, events, what, check, now = () => undefined, detail = () => "") {
    const names = [events].flat();
    return new Promise((resolve, reject) => {
        const already = now();
        if (already) return resolve(already);
        const done = () => {
            clearTimeout(timer);
            for (const name of names) emitter.removeListener(name, listener);
        };
        const timer = setTimeout(() => {
            done();
            reject(new Error(`never saw ${what} within ${WAIT_MS} ms ${detail()}`));
        }, WAIT_MS);
        function listener(...args) {
            let result;
            try {
                result = check(...args);
            } catch (e) {
                done();
                return reject(e);
            }
            if (result) {
                done();
                resolve(result);
            }
        }
        for (const name of names) emitter.on(name, listener);
    });
}

async function register(username) {
    const anonymous = createClient({ baseUrl: BASE_URL });
    // The first request has no auth: the server answers 401 with its flows and a session.
    let session;
    try {
        await anonymous.registerRequest({ username, password: PASSWORD });
        assert.fail("registration without auth succeeded");
    } catch (e) {
        if (!(e instanceof MatrixError)) throw e;
        assert.equal(e.httpStatus, 401, `first /register: ${e.message}`);
        const flows = e.data.flows.map((f) => f.stages.join(","));
        assert.ok(flows.includes("m.login.dummy"), `flows ${JSON.stringify(flows)}`);
        session = e.data.session;
        assert.equal(typeof session, "string");
    }
    const registered = await anonymous.registerRequest({
        username,
        password: PASSWORD,
        initial_device_display_name: "js-sdk reg",
        auth: { type: "m.login.dummy", session },
    });
    assert.match(registered.user_id, new RegExp(`^@${username}:`));
    assert.ok(registered.access_token, "registration returned no access token");
    return registered;
}

async function login(username, registered) {
    const anonymous = createClient({ baseUrl: BASE_URL });
    const flows = await anonymous.loginFlows();
    assert.ok(
        flows.flows.some((f) => f.type === "m.login.password"),
        `login flows ${JSON.stringify(flows)}`,
    );
    const loggedIn = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password: PASSWORD,
        initial_device_display_name: "js-sdk",
    });
    assert.equal(loggedIn.user_id, registered.user_id);
    assert.notEqual(loggedIn.device_id, registered.device_id);
    assert.notEqual(loggedIn.access_token, registered.access_token);
    return loggedIn;
}

function clientFor(credentials) {
    return createClient({
        baseUrl: BASE_URL,
        userId: credentials.user_id,
        deviceId: credentials.device_id,
        accessToken: credentials.access_token,
    });
}

/** Start `client`'s sync loop and wait until its first sync is in. */
async function start(client, initialSyncLimit) {
    const prepared = waitFor(
        client,
        ClientEvent.Sync,
        `${client.getUserId()}'s first sync`,
        (state, _prev, data) => {
            if (state === SyncState.Error) throw data?.error ?? new Error("sync error");
            return state === SyncState.Prepared;
        },
    );
    await client.startClient({ initialSyncLimit, lazyLoadMembers: false });
    await prepared;
}

/** Wait until the sync loop of `client` delivers the event `eventId` in `roomId`'s live
 * timeline (a remote event, status null; not a local echo); resolve with it. Someone else's
 * event arrives as a Room.timeline event; the remote echo of one's own turns its local echo
 * into it (Room.localEchoUpdated). */
function remoteEvent(client, roomId, eventId, what) {
    const inTimeline = () =>
        client
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getId() === eventId && e.status === null);
    return waitFor(
        client,
        [RoomEvent.Timeline, RoomEvent.LocalEchoUpdated],
        what,
        (event, room) => room?.roomId === roomId && inTimeline(),
        inTimeline,
        () => {
            const room = client.getRoom(roomId);
            const tail = room?.getLiveTimeline().getEvents().slice(-4);
            const show = (e) => `${e.getType()} ${e.getId()} ${e.status} ${e.getSender()}`;
            return `(looking for ${eventId}; timeline ends ${JSON.stringify(tail?.map(show))})`;
        },
    );
}

/** The `m.room.message` events with a remote echo in `roomId`'s live timeline, in order. */
function messageIds(client, roomId) {
    return client
        .getRoom(roomId)
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getType() === EventType.RoomMessage && e.status === null)
        .map((e) => e.getId());
}

async function main() {
    assert.ok(BASE_URL, "pass the server URL as argv[2] or STARLING_URL");
    const aliceReg = await register("alice");
    const bobReg = await register("bob");
    const aliceCreds = await login("alice", aliceReg);
    const bobCreds = await login("bob", bobReg);
    const alice = clientFor(aliceCreds);
    const bob = clientFor(bobCreds);
    const aliceId = aliceCreds.user_id;
    const bobId = bobCreds.user_id;
    const result = { alice: aliceId, bob: bobId };

    // Both sync loops run before the room exists: the invite arrives incrementally.
    await start(alice, 20);
    await start(bob, 20);

    const { room_id: roomId } = await alice.createRoom({ name: "js-sdk interop" });
    result.room_id = roomId;
    const bobInvited = waitFor(
        bob,
        RoomMemberEvent.Membership,
        "his invite",
        (event, member) =>
            member.roomId === roomId && member.userId === bobId && member.membership === "invite"
                ? event
                : undefined,
    );
    await alice.invite(roomId, bobId);
    const invite = await bobInvited;
    assert.equal(invite.getSender(), aliceId);
    // The room is stored once the whole sync response is processed.
    const invitedRoom = () => bob.getRoom(roomId)?.getMyMembership() === "invite";
    await waitFor(bob, ClientEvent.Sync, "the invited room", invitedRoom, invitedRoom);
    // The stripped state of the invite carries the room's name.
    assert.equal(bob.getRoom(roomId).name, "js-sdk interop");

    const bobJoined = waitFor(
        bob,
        RoomEvent.MyMembership,
        "his join through sync",
        (room, membership) => room.roomId === roomId && membership === "join",
        () => bob.getRoom(roomId)?.getMyMembership() === "join",
    );
    const joinedRoom = await bob.joinRoom(roomId);
    assert.equal(joinedRoom.roomId, roomId);
    await bobJoined;
    const bobMemberForAlice = await waitFor(
        alice,
        RoomMemberEvent.Membership,
        "Bob's join",
        (event, member) =>
            member.roomId === roomId && member.userId === bobId && member.membership === "join",
        () => alice.getRoom(roomId)?.getMember(bobId)?.membership === "join",
    );
    assert.ok(bobMemberForAlice);
    assert.deepEqual(bob.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(), [
        aliceId,
        bobId,
    ].sort());

    // Messages both ways, one at a time: each must reach the other's sync loop before the
    // next one goes out, so both timelines end up with every message in sending order.
    const sent = [];
    for (let i = 0; i < 2 * MESSAGES_EACH; i++) {
        const [sender, receiver] = i % 2 === 0 ? [alice, bob] : [bob, alice];
        const body = `message ${i} from ${sender.getUserId()}`;
        const { event_id: eventId } = await sender.sendTextMessage(roomId, body);
        const seen = await remoteEvent(
            receiver,
            roomId,
            eventId,
            `${receiver.getUserId()} seeing message ${i}`,
        );
        assert.equal(seen.getSender(), sender.getUserId());
        assert.deepEqual(seen.getContent(), { msgtype: "m.text", body });
        sent.push(eventId);
    }
    // The sender's own messages come back through its sync loop too (remote echoes).
    await remoteEvent(alice, roomId, sent.at(-2), "Alice's own last message");
    await remoteEvent(bob, roomId, sent.at(-1), "Bob's own last message");
    assert.deepEqual(messageIds(bob, roomId), sent, "Bob's timeline");
    assert.deepEqual(messageIds(alice, roomId), sent, "Alice's timeline");
    result.messages_sent = sent.length;
    result.bob_timeline_messages = messageIds(bob, roomId).length;
    result.alice_timeline_messages = messageIds(alice, roomId).length;

    // Alice's display name reaches Bob through her member event.
    const aliceName = "Alice Liddell";
    const renamed = waitFor(
        bob,
        RoomMemberEvent.Name,
        "Alice's new display name",
        (event, member) =>
            member.roomId === roomId && member.userId === aliceId && member.name === aliceName,
        () => bob.getRoom(roomId)?.getMember(aliceId)?.name === aliceName,
    );
    await alice.setDisplayName(aliceName);
    await renamed;
    assert.equal(bob.getRoom(roomId).getMember(aliceId).rawDisplayName, aliceName);
    const profile = await bob.getProfileInfo(aliceId);
    assert.equal(profile.displayname, aliceName);
    result.alice_displayname_seen_by_bob = bob.getRoom(roomId).getMember(aliceId).name;

    alice.stopClient();
    bob.stopClient();

    // A fresh client of Bob's starts with one event of timeline and pages back (scrollback)
    // until the room's creation.
    const bobAgain = clientFor(bobCreds);
    await start(bobAgain, 1);
    const room = bobAgain.getRoom(roomId);
    assert.ok(room, "the room is missing from a fresh initial sync");
    const live = room.getLiveTimeline();
    assert.equal(live.getEvents().length, 1, "initialSyncLimit 1");
    const firstLive = live.getEvents()[0];
    assert.equal(firstLive.getType(), EventType.RoomMember, "the last event: Alice's rename");
    assert.equal(firstLive.getStateKey(), aliceId);
    let scrollbacks = 0;
    const created = () => live.getEvents()[0]?.getType() === EventType.RoomCreate;
    while (!created() && scrollbacks < 40) {
        const before = live.getEvents().length;
        await bobAgain.scrollback(room, 5);
        scrollbacks++;
        if (live.getEvents().length === before && room.oldState.paginationToken === null) break;
    }
    assert.ok(created(), `scrollback stopped before the room's creation (${scrollbacks} pages)`);
    const allIds = live.getEvents().map((e) => e.getId());
    assert.equal(new Set(allIds).size, allIds.length, "scrollback returned duplicates");
    assert.deepEqual(messageIds(bobAgain, roomId), sent, "Bob's paginated history");
    assert.ok(scrollbacks >= 5, `only ${scrollbacks} scrollbacks`);
    result.scrollbacks = scrollbacks;
    result.earliest_message_seen = messageIds(bobAgain, roomId)[0] === sent[0];
    result.paginated_event_types = live.getEvents().map((e) => e.getType());

    // The same history through createMessagesRequest in one page, backwards from the end of
    // the room (no `from`: allowed since Matrix 1.3).
    const back = await bobAgain.createMessagesRequest(roomId, null, 100, Direction.Backward);
    const backMessages = back.chunk
        .filter((e) => e.type === EventType.RoomMessage)
        .map((e) => e.event_id);
    assert.deepEqual(backMessages.reverse(), sent, "/messages backwards");
    assert.equal(back.chunk.at(-1).type, EventType.RoomCreate);
    result.messages_request_events = back.chunk.length;

    // Room summary (MSC3266): the SDK takes the stable path when /versions advertises
    // org.matrix.msc3266, as Synapse does.
    const summary = await bobAgain.getRoomSummary(roomId);
    assert.equal(summary.room_id, roomId, "room summary");
    assert.equal(summary.membership, "join", "room summary membership");
    result.summary_name = summary.name;

    // Delayed events (MSC4140, as Element Call uses them): a message scheduled for later,
    // listed, then sent at once by its delay ID.
    const delayed = await bobAgain._unstable_sendDelayedEvent(roomId, { delay: 600_000 }, null, "m.room.message", {
        msgtype: "m.text",
        body: "sent by delay id",
    });
    assert.ok(delayed.delay_id, "no delay_id");
    const scheduled = await bobAgain._unstable_getDelayedEvents();
    assert.deepEqual(scheduled.delayed_events.map((e) => e.delay_id), [delayed.delay_id]);
    await bobAgain._unstable_sendScheduledDelayedEvent(delayed.delay_id);
    const finalised = await bobAgain._unstable_getDelayedEvents("finalised");
    result.delayed_event_sent = finalised.delayed_events.some(
        (e) => e.delay_id === delayed.delay_id && e.event_id,
    );
    bobAgain.stopClient();

    clearTimeout(overall);
    // Stopped clients leave timers behind in the SDK (a 6-hour capabilities refresh, one
    // 110 s timeout per /sync request made), which would hold the process for minutes.
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((e) => fail(e?.stack ?? String(e)));
