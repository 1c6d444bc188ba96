// A matrix-js-sdk client with Rust crypto (the stack Element Web runs on), driven line by
// line over stdin/stdout by tests/client/test_js_sdk_peer.py to talk with Starling's own
// client (starling_client) through a real `starling serve`.
//
//   node peer.mjs http://127.0.0.1:PORT USERNAME PASSWORD
//
// It logs in, starts Rust crypto (in memory) and syncs; it joins every room it is invited
// to; every room message it sees is printed, decrypted, as one JSON line
// {"event": {room_id, event_id, sender, type, msgtype, body, wire_type, file, decryption_failure}}.
// Commands, one JSON object a line on stdin:
//   {"cmd": "send", "room_id": ..., "body": ...}           → {"sent": event_id}
//   {"cmd": "download", "file": <EncryptedFile>}           → {"downloaded": base64 of plaintext}
//   {"cmd": "send_media", "room_id", "msgtype", "body", "mimetype", "data": base64,
//    "info": {...}, "voice": bool}   encrypt (WebCrypto), upload, send → {"sent": event_id}
//   {"cmd": "make_backup"}    secret storage + a key backup of every room key it holds
//                             → {"recovery_key": "EsT1 ..."}
//   {"cmd": "restore_backup", "recovery_key": ...}  backup key from secret storage, then
//                             every room key of the backup → {"restored": n}
//   {"cmd": "verify", "user_id": ..., "device_id": ...}  SAS with that device (js requests,
//                             starts, and confirms the emoji) → {"sas": {emoji, decimal}},
//                             then {"verified": true} once the device is verified
//   {"cmd": "await_verification", "user_id": ..., "device_id": ...}  accept the next incoming verification request, confirm
//                             the emoji → {"sas": {emoji, decimal}}, then {"verified": bool}
//   {"cmd": "bootstrap_cross_signing"}  create and upload cross-signing keys (UIA with the
//                             password) → {"cross_signing": true}
//   {"cmd": "trust", "user_id": ..., "device_id": ..., "wait": bool}  that user's identity
//                             and device as seen here (with wait: until the identity is
//                             cross-signing verified, 20 s at most) → {"trust": {...}}
//   {"cmd": "exit"}
// Everything it prints besides those lines goes to stderr.

import "./node22.mjs";

const BASE_URL = process.argv[2];
const USERNAME = process.argv[3];
const PASSWORD = process.argv[4];

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { ClientEvent, RoomEvent, RoomMemberEvent, SyncState, createClient } = sdk;

logger.setLevel(process.env.JS_SDK_LOG_LEVEL ?? "warn");
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
console.log = console.info = console.debug = console.warn = console.error;

const anonymous = createClient({ baseUrl: BASE_URL });
const creds = await anonymous.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: USERNAME },
    password: PASSWORD,
    initial_device_display_name: "js-sdk peer",
});
const { decodeRecoveryKey } = await import("matrix-js-sdk/lib/crypto-api/recovery-key.js");
let secretStorageKey = null; // Uint8Array, once known
const client = createClient({
    baseUrl: BASE_URL,
    userId: creds.user_id,
    deviceId: creds.device_id,
    accessToken: creds.access_token,
    cryptoCallbacks: {
        getSecretStorageKey: async ({ keys }) => {
            const keyId = Object.keys(keys)[0];
            return secretStorageKey ? [keyId, secretStorageKey] : null;
        },
        cacheSecretStorageKey: (_keyId, _info, key) => {
            secretStorageKey = key;
        },
    },
});
await client.initRustCrypto({ useIndexedDB: false });

const incomingRequests = [];
client.on("crypto.verificationRequestReceived", (request) => incomingRequests.push(request));
const seen = new Set();
async function report(ev, room) {
    if (seen.has(ev.getId())) return;
    await client.decryptEventIfNeeded(ev);
    if (ev.getType() !== "m.room.message" && !ev.isDecryptionFailure()) return;
    if (ev.isDecryptionFailure()) {
        // Retried when the key arrives (Event.decrypted below).
        return;
    }
    seen.add(ev.getId());
    const content = ev.getContent();
    out({
        event: {
            room_id: room?.roomId ?? ev.getRoomId(),
            event_id: ev.getId(),
            sender: ev.getSender(),
            type: ev.getType(),
            msgtype: content.msgtype,
            body: content.body,
            wire_type: ev.getWireType(),
            file: content.file ?? null,
            info: content.info ?? null,
            voice: "org.matrix.msc3245.voice" in content,
        },
    });
}
client.on(RoomEvent.Timeline, (ev, room) => {
    report(ev, room).catch((e) => console.error("report failed", e));
});
client.on(sdk.MatrixEventEvent.Decrypted, (ev) => {
    report(ev, client.getRoom(ev.getRoomId())).catch((e) => console.error("report failed", e));
});
client.on(RoomMemberEvent.Membership, (_ev, member) => {
    if (member.userId === client.getUserId() && member.membership === "invite") {
        client.joinRoom(member.roomId).catch((e) => console.error("join failed", e));
    }
});

const prepared = new Promise((resolve, reject) => {
    client.on(ClientEvent.Sync, (state, _prev, data) => {
        if (state === SyncState.Prepared) resolve();
        if (state === SyncState.Error) reject(data?.error ?? new Error("sync error"));
    });
});
await client.startClient({ initialSyncLimit: 20 });
await prepared;
out({ ready: { user_id: creds.user_id, device_id: creds.device_id } });

let buffer = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", async (chunk) => {
    buffer += chunk;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (!line.trim()) continue;
        const command = JSON.parse(line);
        try {
            if (command.cmd === "send") {
                // Our join may be ahead of our own sync: wait until the room is configured.
                const deadline = Date.now() + 20_000;
                while (
                    !client.getRoom(command.room_id) ||
                    !(await client.getCrypto().isEncryptionEnabledInRoom(command.room_id))
                ) {
                    if (Date.now() > deadline) throw new Error("the room never became encrypted");
                    await new Promise((r) => setTimeout(r, 100));
                }
                const room = client.getRoom(command.room_id);
                if (room) await client.getCrypto().prepareToEncrypt(room);
                const sent = await client.sendMessage(command.room_id, {
                    msgtype: "m.text",
                    body: command.body,
                });
                out({ sent: sent.event_id });
            } else if (command.cmd === "download") {
                const file = command.file;
                const [server, mediaId] = file.url.slice("mxc://".length).split("/");
                const resp = await fetch(
                    `${BASE_URL}/_matrix/client/v1/media/download/${server}/${mediaId}`,
                    { headers: { Authorization: `Bearer ${creds.access_token}` } },
                );
                const ciphertext = new Uint8Array(await resp.arrayBuffer());
                const { decryptAttachment } = await import("./attachment.mjs");
                const plain = await decryptAttachment(ciphertext, file);
                out({ downloaded: Buffer.from(plain).toString("base64") });
            } else if (command.cmd === "make_backup") {
                const crypto = client.getCrypto();
                const generated = await crypto.createRecoveryKeyFromPassphrase();
                secretStorageKey = generated.privateKey;
                await crypto.bootstrapSecretStorage({
                    createSecretStorageKey: async () => generated,
                    setupNewKeyBackup: true,
                    setupNewSecretStorage: true,
                });
                const deadline = Date.now() + 20_000;
                for (;;) {
                    const version = await crypto.getActiveSessionBackupVersion();
                    if (version) {
                        const resp = await fetch(
                            `${BASE_URL}/_matrix/client/v3/room_keys/keys?version=${version}`,
                            { headers: { Authorization: `Bearer ${creds.access_token}` } },
                        );
                        const rooms = (await resp.json()).rooms ?? {};
                        const count = Object.values(rooms).reduce(
                            (n, r) => n + Object.keys(r.sessions ?? {}).length,
                            0,
                        );
                        if (count >= (command.sessions ?? 1)) break;
                    }
                    if (Date.now() > deadline) throw new Error("the backup never filled");
                    await new Promise((r) => setTimeout(r, 200));
                }
                out({ recovery_key: generated.encodedPrivateKey });
            } else if (command.cmd === "restore_backup") {
                const crypto = client.getCrypto();
                secretStorageKey = decodeRecoveryKey(command.recovery_key);
                await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
                const restored = await crypto.restoreKeyBackup();
                out({ restored: restored.imported });
            } else if (command.cmd === "verify") {
                const crypto = client.getCrypto();
                const { VerificationPhase, VerifierEvent } = await import(
                    "matrix-js-sdk/lib/crypto-api/index.js"
                );
                process.stderr.write("VERIFY: downloading devices\n");
                // requestDeviceVerification needs the device in the Rust crypto machine, which
                // learns a room member's devices only once its sync has processed the join
                // (getUserDeviceInfo of a user not tracked yet downloads them over HTTP
                // without telling the machine): wait until the machine knows it.
                const known = Date.now() + 30_000;
                for (;;) {
                    await crypto.getUserDeviceInfo([command.user_id], true);
                    const status = await crypto.getDeviceVerificationStatus(
                        command.user_id,
                        command.device_id,
                    );
                    if (status !== null) break;
                    if (Date.now() > known) throw new Error("the device never became known");
                    await new Promise((r) => setTimeout(r, 200));
                }
                process.stderr.write("VERIFY: requesting\n");
                const request = await crypto.requestDeviceVerification(
                    command.user_id,
                    command.device_id,
                );
                process.stderr.write(`VERIFY: requested ${request.transactionId} phase ${request.phase}\n`);
                const deadline = Date.now() + 30_000;
                while (request.phase !== VerificationPhase.Ready) {
                    if (request.phase === VerificationPhase.Cancelled) throw new Error("cancelled");
                    if (Date.now() > deadline) throw new Error("the request was never answered");
                    await new Promise((r) => setTimeout(r, 100));
                }
                const verifier = await request.startVerification("m.sas.v1");
                verifier.on(VerifierEvent.ShowSas, (sas) => {
                    out({ sas: { emoji: sas.sas.emoji, decimal: sas.sas.decimal } });
                    sas.confirm();
                });
                await verifier.verify();
                const status = await crypto.getDeviceVerificationStatus(
                    command.user_id,
                    command.device_id,
                );
                out({ verified: Boolean(status?.isVerified()) });
            } else if (command.cmd === "await_verification") {
                const { VerificationPhase, VerifierEvent } = await import(
                    "matrix-js-sdk/lib/crypto-api/index.js"
                );
                // Rust crypto handles requests only from devices it knows.
                if (command.user_id) {
                    await client.getCrypto().getUserDeviceInfo([command.user_id], true);
                }
                out({ waiting: true });
                const deadline = Date.now() + 30_000;
                while (incomingRequests.length === 0) {
                    if (Date.now() > deadline) throw new Error("no verification request came");
                    await new Promise((r) => setTimeout(r, 100));
                }
                const request = incomingRequests.shift();
                await request.accept();
                while (!request.verifier) {
                    if (request.phase === VerificationPhase.Cancelled) throw new Error("cancelled");
                    if (Date.now() > deadline) throw new Error("the other side never started");
                    await new Promise((r) => setTimeout(r, 100));
                }
                const verifier = request.verifier;
                verifier.on(VerifierEvent.ShowSas, (sas) => {
                    out({ sas: { emoji: sas.sas.emoji, decimal: sas.sas.decimal } });
                    sas.confirm();
                });
                await verifier.verify();
                const status = await client
                    .getCrypto()
                    .getDeviceVerificationStatus(request.otherUserId, command.device_id);
                out({ verified: Boolean(status?.isVerified()) });
            } else if (command.cmd === "send_media") {
                // An encrypted image or voice message, encrypted here with WebCrypto.
                const { encryptAttachment } = await import("./attachment.mjs");
                const plain = Buffer.from(command.data, "base64");
                const { data: ciphertext, info } = await encryptAttachment(plain);
                const resp = await fetch(`${BASE_URL}/_matrix/media/v3/upload`, {
                    method: "POST",
                    headers: {
                        Authorization: `Bearer ${creds.access_token}`,
                        "Content-Type": "application/octet-stream",
                    },
                    body: ciphertext,
                });
                const uploaded = await resp.json();
                const content = {
                    msgtype: command.msgtype,
                    body: command.body,
                    file: { ...info, url: uploaded.content_uri },
                    info: { mimetype: command.mimetype, size: plain.length, ...(command.info ?? {}) },
                };
                if (command.voice) {
                    content["org.matrix.msc3245.voice"] = {};
                    content["org.matrix.msc1767.audio"] = { duration: command.info?.duration };
                }
                const room = client.getRoom(command.room_id);
                if (room) await client.getCrypto().prepareToEncrypt(room);
                const sent = await client.sendMessage(command.room_id, content);
                out({ sent: sent.event_id });
            } else if (command.cmd === "bootstrap_cross_signing") {
                // The server asks for the password (user-interactive auth): first call
                // without auth to learn the session, then with the password.
                await client.getCrypto().bootstrapCrossSigning({
                    authUploadDeviceSigningKeys: async (makeRequest) => {
                        let session;
                        try {
                            await makeRequest(null);
                            return;
                        } catch (e) {
                            session = e?.data?.session;
                            if (!session) throw e;
                        }
                        await makeRequest({
                            type: "m.login.password",
                            identifier: { type: "m.id.user", user: USERNAME },
                            password: PASSWORD,
                            session,
                        });
                    },
                });
                const status = await client.getCrypto().getCrossSigningStatus();
                out({ cross_signing: status.publicKeysOnDevice && status.privateKeysCachedLocally.masterKey });
            } else if (command.cmd === "trust") {
                // How this client sees a user's identity and one of their devices.
                const crypto = client.getCrypto();
                const deadline = Date.now() + 20_000;
                for (;;) {
                    await crypto.getUserDeviceInfo([command.user_id], true);
                    const user = await crypto.getUserVerificationStatus(command.user_id);
                    const device = await crypto.getDeviceVerificationStatus(
                        command.user_id,
                        command.device_id,
                    );
                    const result = {
                        cross_signing_verified: user.isCrossSigningVerified(),
                        device_cross_signing_verified: Boolean(device?.crossSigningVerified),
                        device_signed_by_owner: Boolean(device?.signedByOwner),
                    };
                    if ((!command.wait || result.cross_signing_verified) || Date.now() > deadline) {
                        out({ trust: result });
                        break;
                    }
                    await new Promise((r) => setTimeout(r, 300));
                }
            } else if (command.cmd === "exit") {
                client.stopClient();
                process.exit(0);
            }
        } catch (e) {
            process.stderr.write(`COMMAND FAILED: ${e?.stack ?? e}\n`);
            out({ error: String(e?.message ?? e) });
        }
    }
});
