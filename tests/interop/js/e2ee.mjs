// matrix-js-sdk with Rust crypto (the stack Element Web runs on) against a real
// `starling serve`, driven by tests/interop/test_js_sdk_e2ee.py.
//
//   node e2ee.mjs http://127.0.0.1:PORT [matrix-js-sdk | matrix-js-sdk-old]
//
// Alice and Bob register, start Rust crypto (in memory) and sync; Alice bootstraps
// cross-signing and creates an encrypted room inviting Bob; Bob's client learns the room is
// encrypted from the invite-then-join sync, and messages go both ways, each decrypted by the
// other; the server's copy of the room (raw /messages) holds only m.room.encrypted; an
// olm-encrypted to-device message reaches Bob; Bob sees Alice's cross-signing identity; a
// encrypted image and voice message go from Alice to Bob (attachments encrypted as
// Element Web does, uploaded, downloaded by Bob through authenticated media and decrypted);
// a second device of Bob's logs in and decrypts a new message; when it logs out, it leaves
// Alice's view of Bob's devices; SAS verification between Alice's and Bob's devices; a key
// backup made by Alice's device is restored on a new one, which decrypts the old messages;
// both clients then idle (no /keys/query loop). Every step is asserted here; on success stdout holds one
// line of JSON for pytest to check again (it also counts /keys/query in the access log).

import "./node22.mjs";
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { decryptAttachment, encryptAttachment } from "./attachment.mjs";

const BASE_URL = process.argv[2] ?? process.env.STARLING_URL;
const SDK = process.argv[3] ?? "matrix-js-sdk";
const PASSWORD = "correct horse battery staple";
const SUFFIX = process.env.USER_SUFFIX ?? ""; // to run again against the same server
const WAIT_MS = 20_000; // for any one thing to reach the other side
const IDLE_MS = Number(process.env.IDLE_MS ?? 5_000);
const OVERALL_MS = 100_000;

const sdk = await import(SDK);
const { logger } = await import(`${SDK}/lib/logger.js`);
const { ClientEvent, createClient, MatrixError, SyncState } = sdk;
const { CryptoEvent, VerificationPhase, VerifierEvent } = await import(
    `${SDK}/lib/crypto-api/index.js`
);

logger.setLevel(process.env.JS_SDK_LOG_LEVEL ?? "warn");
console.log = console.info = console.debug = console.warn = console.error;

function fail(message) {
    process.stderr.write(`FAIL: ${message}\n`);
    process.exit(1);
}
const overall = setTimeout(() => fail(`not done within ${OVERALL_MS} ms`), OVERALL_MS);

/** Poll `check` (async, truthy when done) until it holds; reject after WAIT_MS. */
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
        initial_device_display_name: `${username} first`,
        auth: { type: "m.login.dummy", session },
    });
}

async function login(username) {
    const anonymous = createClient({ baseUrl: BASE_URL });
    return anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password: PASSWORD,
        initial_device_display_name: `${username} second`,
    });
}

/** A client with Rust crypto (in-memory store), its first sync in. */
async function cryptoClient(creds) {
    const client = createClient({
        baseUrl: BASE_URL,
        userId: creds.user_id,
        deviceId: creds.device_id,
        accessToken: creds.access_token,
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(data?.error ?? new Error("sync error"));
        });
    });
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
    await prepared;
    return client;
}

/** The decrypted body of the event `eventId` once `client` has it in `roomId`. */
async function decryptedBody(client, roomId, eventId, what) {
    return until(what, async () => {
        const ev = client
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getId() === eventId);
        if (!ev) return undefined;
        await client.decryptEventIfNeeded(ev);
        if (ev.isDecryptionFailure() || ev.getType() !== "m.room.message") return undefined;
        assert.equal(ev.getWireType(), "m.room.encrypted", `${what}: sent in the clear`);
        return ev.getContent().body;
    });
}

/** The decrypted content of the event `eventId` once `client` has it in `roomId`. */
async function decryptedContent(client, roomId, eventId, what) {
    return until(what, async () => {
        const ev = client
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getId() === eventId);
        if (!ev) return undefined;
        await client.decryptEventIfNeeded(ev);
        if (ev.isDecryptionFailure() || ev.getType() !== "m.room.message") return undefined;
        assert.equal(ev.getWireType(), "m.room.encrypted", `${what}: sent in the clear`);
        return ev.getContent();
    });
}

/** Alice sends an encrypted attachment (`extra` completes the content); Bob decrypts the
 * event, downloads the media through authenticated media and decrypts it. */
async function attachmentRoundTrip(alice, bob, bobCreds, roomId, plaintext, extra) {
    const { data, info } = await encryptAttachment(plaintext);
    const upload = await alice.uploadContent(new Blob([data]), {
        type: "application/octet-stream",
        includeFilename: false,
    });
    const mimetype = extra.info.mimetype;
    const sent = await alice.sendMessage(roomId, {
        ...extra,
        file: { ...info, url: upload.content_uri, mimetype },
    });
    const content = await decryptedContent(bob, roomId, sent.event_id, `${extra.msgtype} at Bob`);
    assert.equal(content.msgtype, extra.msgtype);
    assert.equal(content.url, undefined, "an encrypted attachment has no plain url");
    const url = bob.mxcUrlToHttp(content.file.url, undefined, undefined, undefined, false, true, true);
    assert.ok(url?.includes("/_matrix/client/v1/media/download/"), `download URL ${url}`);
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${bobCreds.access_token}` } });
    assert.equal(resp.status, 200, `download ${url}`);
    const ciphertext = new Uint8Array(await resp.arrayBuffer());
    assert.ok(!Buffer.from(ciphertext).equals(Buffer.from(plaintext)), "media stored in the clear");
    const decrypted = await decryptAttachment(ciphertext, content.file);
    assert.ok(Buffer.from(decrypted).equals(Buffer.from(plaintext)), `${extra.msgtype} bytes differ`);
    return content;
}

async function rawMessages(creds, roomId) {
    const url = `${BASE_URL}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=100`;
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${creds.access_token}` } });
    assert.equal(resp.status, 200);
    return (await resp.json()).chunk;
}

async function main() {
    assert.ok(BASE_URL, "pass the server URL as argv[2] or STARLING_URL");
    const result = { sdk: SDK };
    const aliceCreds = await register(`alice${SUFFIX}`);
    const bobCreds = await register(`bob${SUFFIX}`);
    const alice = await cryptoClient(aliceCreds);
    const bob = await cryptoClient(bobCreds);
    const aliceId = aliceCreds.user_id;
    const bobId = bobCreds.user_id;
    result.alice = aliceId;
    result.bob = bobId;

    // Cross-signing bootstrapped by Alice (UIA with her password), seen by Bob.
    await alice.getCrypto().bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: aliceId },
                password: PASSWORD,
            });
        },
    });
    assert.ok(await alice.getCrypto().isCrossSigningReady(), "Alice's cross-signing not ready");
    result.bob_sees_alice_cross_signing = await bob
        .getCrypto()
        .userHasCrossSigningKeys(aliceId, true);
    assert.ok(result.bob_sees_alice_cross_signing, "Bob does not see Alice's cross-signing");

    // An encrypted room created with an invite; Bob joins and knows it is encrypted.
    const { room_id: roomId } = await alice.createRoom({
        name: "encrypted",
        invite: [bobId],
        initial_state: [
            {
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            },
        ],
    });
    result.room_id = roomId;
    await until("Bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
    await bob.joinRoom(roomId);
    await until("Bob's join in his own sync", () => bob.getRoom(roomId)?.getMyMembership() === "join");
    result.bob_knows_room_encrypted = await until("Bob's client knowing the room is encrypted", () =>
        bob.getCrypto().isEncryptionEnabledInRoom(roomId),
    );
    await until("Bob's join seen by Alice", () =>
        alice.getRoom(roomId)?.getMember(bobId)?.membership === "join",
    );

    const aliceDevice = await until("Alice's device cross-signed, seen by Bob", async () => {
        await bob.getCrypto().getUserDeviceInfo([aliceId], true);
        const status = await bob
            .getCrypto()
            .getDeviceVerificationStatus(aliceId, aliceCreds.device_id);
        return status?.signedByOwner ? status : undefined;
    });
    result.alice_device_signed_by_owner = aliceDevice.signedByOwner;

    // Messages both ways, decrypted by the other.
    const plaintexts = [];
    const sent1 = await alice.sendTextMessage(roomId, "secret from alice 1");
    plaintexts.push("secret from alice 1");
    assert.equal(await decryptedBody(bob, roomId, sent1.event_id, "Alice's message at Bob"), plaintexts[0]);
    const sent2 = await bob.sendTextMessage(roomId, "secret from bob 1");
    plaintexts.push("secret from bob 1");
    assert.equal(await decryptedBody(alice, roomId, sent2.event_id, "Bob's reply at Alice"), plaintexts[1]);
    result.messages_decrypted = 2;

    // An encrypted image and an encrypted voice message (MSC3245, as Element sends them).
    const image = webcrypto.getRandomValues(new Uint8Array(4096));
    await attachmentRoundTrip(alice, bob, bobCreds, roomId, image, {
        msgtype: "m.image",
        body: "photo.png",
        info: { mimetype: "image/png", size: image.length, w: 64, h: 64 },
    });
    const voice = Buffer.concat([Buffer.from("OggS"), webcrypto.getRandomValues(new Uint8Array(2048))]);
    const voiceContent = await attachmentRoundTrip(alice, bob, bobCreds, roomId, voice, {
        msgtype: "m.audio",
        body: "Voice message",
        info: { mimetype: "audio/ogg", size: voice.length, duration: 1500 },
        "org.matrix.msc1767.audio": { duration: 1500, waveform: [0, 512, 1024, 512, 0] },
        "org.matrix.msc3245.voice": {},
    });
    assert.deepEqual(voiceContent["org.matrix.msc3245.voice"], {});
    assert.equal(voiceContent["org.matrix.msc1767.audio"].duration, 1500);
    result.attachments_round_trip = ["m.image", "m.audio (voice)"];

    // Olm-encrypted to-device from Alice to Bob's device.
    // matrix-js-sdk 43 says how a to-device message came (ReceivedToDeviceMessage); 36 only
    // hands over the decrypted event (the test checks the server relayed m.room.encrypted).
    const toDevice = new Promise((resolve) => {
        if (ClientEvent.ReceivedToDeviceMessage) {
            bob.on(ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }) => {
                if (message.type === "org.example.starling.ping") {
                    resolve({ content: message.content, olm: encryptionInfo !== null });
                }
            });
        } else {
            bob.on(ClientEvent.ToDeviceEvent, (ev) => {
                if (ev.getType() === "org.example.starling.ping") {
                    resolve({ content: ev.getContent(), olm: null });
                }
            });
        }
    });
    const batch = await alice
        .getCrypto()
        .encryptToDeviceMessages(
            "org.example.starling.ping",
            [{ userId: bobId, deviceId: bobCreds.device_id }],
            { n: 42 },
        );
    assert.equal(batch.eventType, "m.room.encrypted");
    await alice.queueToDevice(batch);
    const ping = await Promise.race([
        toDevice,
        new Promise((_, reject) => setTimeout(() => reject(new Error("to-device never arrived")), WAIT_MS)),
    ]);
    assert.equal(ping.content.n, 42);
    assert.notEqual(ping.olm, false, "the to-device message arrived in the clear");
    result.to_device_olm = ping.olm ?? "not reported by this SDK";

    // A second device of Bob's logs in and decrypts a new message.
    const bob2Creds = await login(`bob${SUFFIX}`);
    const bob2 = await cryptoClient(bob2Creds);
    await until("Bob's second device in Alice's view", async () => {
        const devices = await alice.getCrypto().getUserDeviceInfo([bobId], true);
        return devices.get(bobId)?.has(bob2Creds.device_id);
    });
    const sent3 = await alice.sendTextMessage(roomId, "secret from alice 2");
    plaintexts.push("secret from alice 2");
    assert.equal(await decryptedBody(bob2, roomId, sent3.event_id, "Alice's message at Bob's 2nd device"), plaintexts[2]);
    assert.equal(await decryptedBody(bob, roomId, sent3.event_id, "Alice's message at Bob"), plaintexts[2]);
    result.second_device_decrypted = true;

    // Bob's second device logs out and leaves Alice's list of his devices.
    bob2.stopClient();
    await bob2.logout(true);
    await until("Bob's logged-out device gone from Alice's view", async () => {
        const devices = await alice.getCrypto().getUserDeviceInfo([bobId], true);
        return devices.get(bobId) && !devices.get(bobId).has(bob2Creds.device_id);
    });
    result.logged_out_device_gone = true;
    const sent4 = await bob.sendTextMessage(roomId, "secret from bob 2");
    plaintexts.push("secret from bob 2");
    assert.equal(await decryptedBody(alice, roomId, sent4.event_id, "Bob's last message at Alice"), plaintexts[3]);
    result.messages_decrypted = 4;

    // SAS verification between Alice's and Bob's devices (to-device m.key.verification.*):
    // both see the same emoji and confirm; each then holds the other's device verified.
    const bobRequest = new Promise((resolve) => {
        bob.on(CryptoEvent.VerificationRequestReceived, (request) => resolve(request));
    });
    const aliceRequest = await alice
        .getCrypto()
        .requestDeviceVerification(bobId, bobCreds.device_id);
    const incoming = await Promise.race([
        bobRequest,
        new Promise((_, reject) =>
            setTimeout(() => reject(new Error("verification request never reached Bob")), WAIT_MS),
        ),
    ]);
    assert.equal(incoming.otherUserId, aliceId);
    await incoming.accept();
    await until("Alice's request ready", () => aliceRequest.phase === VerificationPhase.Ready);
    const shown = [];
    const confirmOnShow = (verifier) =>
        verifier.on(VerifierEvent.ShowSas, (sas) => {
            shown.push(sas.sas.emoji.map(([emoji]) => emoji).join(""));
            sas.confirm();
        });
    const aliceVerifier = await aliceRequest.startVerification("m.sas.v1");
    confirmOnShow(aliceVerifier);
    const aliceDone = aliceVerifier.verify();
    const bobVerifier = await until("Bob's verifier", () => incoming.verifier);
    confirmOnShow(bobVerifier);
    await Promise.all([aliceDone, bobVerifier.verify()]);
    assert.equal(shown.length, 2);
    assert.equal(shown[0], shown[1], "the two sides showed different emoji");
    await until("Bob's device verified at Alice", async () =>
        (await alice.getCrypto().getDeviceVerificationStatus(bobId, bobCreds.device_id))?.isVerified(),
    );
    await until("Alice's device verified at Bob", async () =>
        (await bob.getCrypto().getDeviceVerificationStatus(aliceId, aliceCreds.device_id))?.isVerified(),
    );
    await until("both requests done", () =>
        aliceRequest.phase === VerificationPhase.Done && incoming.phase === VerificationPhase.Done,
    );
    result.sas_verified = true;

    // Key backup created on Alice's device; a new device of hers restores it (with the
    // backup key handed over, as secret storage would) and decrypts the old messages.
    await alice.getCrypto().resetKeyBackup();
    const version = await until("Alice's backup active", () =>
        alice.getCrypto().getActiveSessionBackupVersion(),
    );
    await until("Alice's room keys in the backup", async () => {
        const url = `${BASE_URL}/_matrix/client/v3/room_keys/keys?version=${version}`;
        const resp = await fetch(url, {
            headers: { Authorization: `Bearer ${aliceCreds.access_token}` },
        });
        const sessions = (await resp.json()).rooms?.[roomId]?.sessions ?? {};
        return Object.keys(sessions).length >= 2; // Alice's outbound session and Bob's
    });
    const alice2Creds = await login(`alice${SUFFIX}`);
    const alice2 = await cryptoClient(alice2Creds);
    const backupKey = await alice.getCrypto().getSessionBackupPrivateKey();
    assert.ok(backupKey, "no backup key on Alice's device");
    await alice2.getCrypto().storeSessionBackupPrivateKey(backupKey, version);
    const restored = await alice2.getCrypto().restoreKeyBackup();
    assert.ok(restored.imported >= 2, `restored ${JSON.stringify(restored)}`);
    assert.equal(
        await decryptedBody(alice2, roomId, sent2.event_id, "Bob's old message at Alice's new device"),
        plaintexts[1],
    );
    assert.equal(
        await decryptedBody(alice2, roomId, sent1.event_id, "Alice's old message at her new device"),
        plaintexts[0],
    );
    result.backup_restored_keys = restored.imported;
    alice2.stopClient();

    // What the server holds: only ciphertext.
    const chunk = await rawMessages(aliceCreds, roomId);
    const types = chunk.map((e) => e.type);
    assert.ok(!types.includes("m.room.message"), `plaintext message on the server: ${types}`);
    assert.equal(types.filter((t) => t === "m.room.encrypted").length, 6); // 4 texts, 2 files
    const raw = JSON.stringify(chunk);
    for (const p of plaintexts) assert.ok(!raw.includes(p), `plaintext "${p}" on the server`);
    result.server_ciphertext_only = true;
    result.plaintexts = plaintexts;

    // Both clients idle for a while, their sync loops running: no /keys/query loop (the
    // test counts those requests in the server's access log).
    // The first half lets late device-list updates (Alice's new device) settle; the raw
    // /messages read between the halves marks where the test expects silence.
    await new Promise((r) => setTimeout(r, IDLE_MS / 2));
    await rawMessages(aliceCreds, roomId);
    await new Promise((r) => setTimeout(r, IDLE_MS / 2));
    alice.stopClient();
    bob.stopClient();
    clearTimeout(overall);
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
}

main().catch((e) => fail(e?.stack ?? String(e)));
