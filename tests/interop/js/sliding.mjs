// matrix-js-sdk's sliding sync (its SlidingSync class, MSC4186) against a real
// `starling serve`, driven by tests/interop/test_js_sdk_sliding.py.
//
//   node sliding.mjs http://127.0.0.1:PORT
//
// Alice (no sync loop) makes three rooms: two Bob joins before his client starts, one she
// invites him to. Bob's client runs the SDK's sliding sync loop (one list, [0, 19], by
// recency) instead of /sync: it must see both joined rooms with their names and the
// invite; he joins the invited room and the SDK must see him joined; Alice's message
// there must reach his live timeline through the long-poll; the list count must say 3.
// Every step is asserted here; on success stdout holds one line of JSON.

import "./node22.mjs";
import assert from "node:assert/strict";

import { ClientEvent, createClient, MatrixError, RoomEvent } from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { SlidingSync, SlidingSyncEvent } from "matrix-js-sdk/lib/sliding-sync.js";

const BASE_URL = process.argv[2] ?? process.env.STARLING_URL;
const PASSWORD = "correct horse battery staple";
const WAIT_MS = 15_000;
const OVERALL_MS = 50_000;

logger.setLevel(process.env.JS_SDK_LOG_LEVEL ?? "warn");
console.log = console.info = console.debug = console.error;

function fail(message) {
    process.stderr.write(`FAIL: ${message}\n`);
    process.exit(1);
}

const overall = setTimeout(() => fail(`not done within ${OVERALL_MS} ms`), OVERALL_MS);

/** Poll `check` (after each of `events` on `emitter`, and every 100 ms) until truthy. */
function until(emitter, events, what, check) {
    return new Promise((resolve, reject) => {
        const names = [events].flat();
        let timer, poll;
        const done = () => {
            clearTimeout(timer);
            clearInterval(poll);
            for (const name of names) emitter.removeListener(name, listener);
        };
        function listener() {
            let result;
            try {
                result = check();
            } catch (e) {
                done();
                return reject(e);
            }
            if (result) {
                done();
                resolve(result);
            }
        }
        timer = setTimeout(() => {
            done();
            reject(new Error(`never saw ${what} within ${WAIT_MS} ms`));
        }, WAIT_MS);
        poll = setInterval(listener, 100);
        for (const name of names) emitter.on(name, listener);
        listener();
    });
}

async function register(username) {
    const anonymous = createClient({ baseUrl: BASE_URL });
    let session;
    try {
        await anonymous.registerRequest({ username, password: PASSWORD });
        assert.fail("registration without auth succeeded");
    } catch (e) {
        if (!(e instanceof MatrixError)) throw e;
        session = e.data.session;
    }
    const registered = await anonymous.registerRequest({
        username,
        password: PASSWORD,
        auth: { type: "m.login.dummy", session },
    });
    return createClient({
        baseUrl: BASE_URL,
        userId: registered.user_id,
        deviceId: registered.device_id,
        accessToken: registered.access_token,
    });
}

async function main() {
    if (!BASE_URL) fail("usage: node sliding.mjs <base url>");
    const versions = await (await fetch(`${BASE_URL}/_matrix/client/versions`)).json();
    assert.equal(versions.unstable_features?.["org.matrix.simplified_msc3575"], true);

    const alice = await register("alice");
    const bob = await register("bob");
    const bobId = bob.getUserId();
    const first = (await alice.createRoom({ name: "First", preset: "public_chat" })).room_id;
    const second = (await alice.createRoom({ name: "Second", preset: "public_chat" })).room_id;
    const invited = (await alice.createRoom({ name: "Invited", preset: "private_chat" })).room_id;
    await bob.joinRoom(first);
    await bob.joinRoom(second);
    await alice.invite(invited, bobId);
    await alice.sendTextMessage(first, "before bob's client started");

    const lists = new Map([
        [
            "all",
            {
                ranges: [[0, 19]],
                timeline_limit: 10,
                required_state: [
                    ["m.room.name", ""],
                    ["m.room.create", ""],
                    ["m.room.member", "$ME"],
                    ["m.room.member", "$LAZY"],
                ],
            },
        ],
    ]);
    const sliding = new SlidingSync(
        BASE_URL,
        lists,
        { timeline_limit: 20, required_state: [["*", "*"]] },
        bob,
        10_000,
    );
    let responses = 0;
    let listCount = null;
    sliding.on(SlidingSyncEvent.Lifecycle, (state, resp, err) => {
        if (err) process.stderr.write(`sliding sync error: ${err}\n`);
        if (resp) {
            responses += 1;
            if (resp.lists?.all) listCount = resp.lists.all.count;
        }
    });
    await bob.startClient({ slidingSync: sliding });

    const membership = (roomId) => bob.getRoom(roomId)?.getMyMembership();
    await until(bob, [ClientEvent.Room, RoomEvent.MyMembership], "the three rooms", () =>
        membership(first) === "join" && membership(second) === "join" && membership(invited) === "invite"
            ? true
            : false,
    );
    const names = [first, second].map((r) => bob.getRoom(r).name);
    assert.deepEqual(names, ["First", "Second"]);
    const firstBodies = bob
        .getRoom(first)
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getType() === "m.room.message")
        .map((e) => e.getContent().body);
    assert.deepEqual(firstBodies, ["before bob's client started"]);

    await bob.joinRoom(invited);
    await until(bob, RoomEvent.MyMembership, "bob joined in his client", () => membership(invited) === "join");

    const sent = await alice.sendTextMessage(invited, "hello over sliding sync");
    const live = () =>
        bob
            .getRoom(invited)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getId() === sent.event_id);
    await until(bob, RoomEvent.Timeline, "alice's message in bob's timeline", live);
    const body = live().getContent().body;
    assert.equal(listCount, 3);

    sliding.stop();
    bob.stopClient();
    clearTimeout(overall);
    process.stdout.write(
        JSON.stringify({
            bob: bobId,
            rooms: [first, second, invited].map((r) => [r, membership(r)]),
            names,
            list_count: listCount,
            message: body,
            responses,
        }) + "\n",
    );
    process.exit(0);
}

main().catch((e) => fail(e?.stack ?? String(e)));
