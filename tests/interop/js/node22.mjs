// matrix-js-sdk 43 wants Node 22 (Promise.withResolvers, ES2024); the machines that run the
// interop tests may have Node 20. Imported first by every script here.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve, reject;
        const promise = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}
