// Dehydrated devices (MSC3814) with matrix-js-sdk's Rust crypto against a real
// `starling serve`, driven by tests/interop/test_js_sdk_e2ee.py.
//
//   node dehydration.mjs http://127.0.0.1:PORT
//
// Alice bootstraps cross-signing and secret storage, then starts dehydration: her client
// uploads a dehydrated device. She goes offline; Bob invites her to an encrypted room
// and sends a message, whose room key his client sends to every device of hers, the
// dehydrated one included. A new device of Alice's logs in, rehydrates the device (the
// dehydration key from secret storage, the to-device messages from the server) and
// decrypts Bob's message, sent before it existed. One line of JSON on stdout.

import "./node22.mjs";
import assert from "node:assert/strict";

const BASE_URL = process.argv[2] ?? process.env.STARLING_URL;
const SDK = "matrix-js-sdk";
const PASSWORD = "correct horse battery staple";
const WAIT_MS = 20_000;
const OVERALL_MS = 90_000;

const sdk = await import(SDK);
const { logger } = await import(`${SDK}/lib/logger.js`);
const { ClientEvent, createClient, MatrixError, SyncState } = sdk;
const { CryptoEvent } = await import(`${SDK}/lib/crypto-api/index.js`);

logger.setLevel(process.env.JS_SDK_LOG_LEVEL ?? "warn");
console.log = console.info = console.debug = console.warn = console.error;

function fail(message) {
    process.stderr.write(`FAIL: ${message}\n`);
    process.exit(1);
}
const overall = setTimeout(() => fail(`not done within ${OVERALL_MS} ms`), OVERALL_MS);

async function until(what, check) {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
        const got = await check();
        if (got) return got;
        if (Date.now() > deadline) throw new Error(`never saw ${what} within ${WAIT_MS} ms`);
        await new Promise((r) => setTimeout(r, 100));
    }
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
    return anonymous.registerRequest({
        username,
        password: PASSWORD,
        auth: { type: "m.login.dummy", session },
    });
}

async function login(username) {
    return createClient({ baseUrl: BASE_URL }).loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password: PASSWORD,
    });
}

// Alice's secret storage key once made (what her recovery key gives any of her devices).
let recoveryKey = null;

async function cryptoClient(creds) {
    const client = createClient({
        baseUrl: BASE_URL,
        userId: creds.user_id,
        deviceId: creds.device_id,
        accessToken: creds.access_token,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                const id = Object.keys(keys)[0];
                return recoveryKey && id ? [id, recoveryKey] : null;
            },
        },
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(data?.error ?? new Error("sync error"));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await prepared;
    return client;
}

async function main() {
    assert.ok(BASE_URL, "pass the server URL as argv[2] or STARLING_URL");
    const result = {};
    const aliceCreds = await register("dalice");
    const bobCreds = await register("dbob");
    const alice = await cryptoClient(aliceCreds);
    const bob = await cryptoClient(bobCreds);
    const aliceId = aliceCreds.user_id;

    await alice.getCrypto().bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: aliceId },
                password: PASSWORD,
            });
        },
    });
    await alice.getCrypto().bootstrapSecretStorage({
        setupNewSecretStorage: true,
        createSecretStorageKey: async () => {
            const key = await alice.getCrypto().createRecoveryKeyFromPassphrase();
            recoveryKey = key.privateKey;
            return key;
        },
    });
    result.dehydration_supported = await alice.getCrypto().isDehydrationSupported();
    assert.ok(result.dehydration_supported, "the server does not look like it supports MSC3814");
    const uploaded = new Promise((resolve) =>
        alice.on(CryptoEvent.DehydratedDeviceUploaded, () => resolve(true)),
    );
    await alice.getCrypto().startDehydration({ createNewKey: true });
    await uploaded;
    const resp = await fetch(
        `${BASE_URL}/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`,
        { headers: { Authorization: `Bearer ${aliceCreds.access_token}` } },
    );
    assert.equal(resp.status, 200);
    const dehydratedId = (await resp.json()).device_id;
    result.dehydrated_device_uploaded = true;
    alice.stopClient();

    // Bob's encrypted room: his client shares the room key with all of Alice's devices.
    const { room_id: roomId } = await bob.createRoom({
        invite: [aliceId],
        initial_state: [
            {
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            },
        ],
    });
    await until("Alice's dehydrated device in Bob's view", async () => {
        const devices = await bob.getCrypto().getUserDeviceInfo([aliceId], true);
        return devices.get(aliceId)?.has(dehydratedId);
    });
    // Bob's client encrypts for the members it knows: createRoom answers once the invite is
    // stored, but Bob's client learns of it from its next /sync (as Element waits for a new
    // room to come down /sync before using it).
    await until("Alice's invite in Bob's view", async () => {
        return bob.getRoom(roomId)?.getMember(aliceId)?.membership === "invite" || undefined;
    });
    const sent = await bob.sendTextMessage(roomId, "for alice, while she was away");

    // Alice's new device: rehydrate, then read Bob's message.
    const alice2Creds = await login("dalice");
    const alice2 = await cryptoClient(alice2Creds);
    await alice2.joinRoom(roomId);
    const completed = new Promise((resolve) =>
        alice2.on(CryptoEvent.RehydrationCompleted, () => resolve(true)),
    );
    // With the recovery key, the new device takes the cross-signing keys from secret
    // storage (as Element's "verify with recovery key"), which dehydration requires.
    await alice2.getCrypto().bootstrapCrossSigning({});
    await alice2.getCrypto().startDehydration({ rehydrate: true });
    result.rehydrated = await completed;
    const body = await until("Bob's message decrypted at Alice's new device", async () => {
        const ev = alice2
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getId() === sent.event_id);
        if (!ev) return undefined;
        await alice2.decryptEventIfNeeded(ev);
        return ev.isDecryptionFailure() ? undefined : ev.getContent().body;
    });
    assert.equal(body, "for alice, while she was away");
    result.decrypted_after_rehydration = true;
    alice2.stopClient();
    bob.stopClient();
    clearTimeout(overall);
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
}

main().catch((e) => fail(e?.stack ?? String(e)));
