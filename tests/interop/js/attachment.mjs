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
