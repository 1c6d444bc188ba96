// Decrypts an encrypted attachment the way Element Web does (WebCrypto, as in
// matrix-encrypt-attachment): check the ciphertext's SHA-256, import the JWK, AES-CTR with
// a 64-bit counter. An independent implementation to check Starling's attachments against.

import { webcrypto } from "node:crypto";

const subtle = webcrypto.subtle;

function decodeBase64(text) {
    const padded = text.replace(/-/g, "+").replace(/_/g, "/");
    return Buffer.from(padded + "=".repeat((4 - (padded.length % 4)) % 4), "base64");
}

export async function decryptAttachment(ciphertext, info) {
    if (info.v !== "v2") throw new Error(`unsupported version ${info.v}`);
    const expected = decodeBase64(info.hashes.sha256);
    const digest = Buffer.from(await subtle.digest("SHA-256", ciphertext));
    if (!digest.equals(expected)) throw new Error("SHA-256 mismatch");
    const key = await subtle.importKey("jwk", info.key, { name: "AES-CTR" }, false, ["encrypt", "decrypt"]);
    const iv = decodeBase64(info.iv);
    return new Uint8Array(
        await subtle.decrypt({ name: "AES-CTR", counter: iv, length: 64 }, key, ciphertext),
    );
}

function encodeBase64(bytes) {
    return Buffer.from(bytes).toString("base64").replace(/=+$/, "");
}

// Encrypts an attachment as Element Web does (matrix-encrypt-attachment): a fresh AES-256
// key, a 128-bit IV whose low 64 bits (the counter) start at zero, AES-CTR, and the
// SHA-256 of the ciphertext. Returns the ciphertext and the `file` info without `url`.
export async function encryptAttachment(plaintext) {
    const key = await subtle.generateKey({ name: "AES-CTR", length: 256 }, true, ["encrypt", "decrypt"]);
    const jwk = await subtle.exportKey("jwk", key);
    const iv = new Uint8Array(16);
    webcrypto.getRandomValues(iv.subarray(0, 8));
    const ciphertext = new Uint8Array(
        await subtle.encrypt({ name: "AES-CTR", counter: iv, length: 64 }, key, plaintext),
    );
    const digest = new Uint8Array(await subtle.digest("SHA-256", ciphertext));
    return {
        data: ciphertext,
        info: {
            v: "v2",
            key: { kty: "oct", alg: "A256CTR", ext: true, k: jwk.k, key_ops: ["encrypt", "decrypt"] },
            iv: encodeBase64(iv),
            hashes: { sha256: encodeBase64(digest) },
        },
    };
}
