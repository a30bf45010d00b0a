/**
 * The entry of the vault's tree worker thread (`lib/vault/_tree_chunk.ts`):
 * like a command, it installs libcrypto's SHA-256 and its batch loops
 * (`lib/net/sha256.ts`), then answers chunks. `moat serve` starts it
 * through `TreeHasher` (see {@linkcode treeWorkerUrl} in `cli/serve.ts`);
 * the release binary carries it as a second entrypoint
 * (`scripts/build.sh`).
 *
 * @module
 */

import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { setNativeSha256, setNativeSha256Batch } from "../lib/sha256.ts";
import { chunkWorker } from "../lib/vault/_tree_chunk.ts";

setNativeSha256(nativeSha256Parts);
setNativeSha256Batch(nativeSha256Batch);

const scope = globalThis as unknown as {
  postMessage(message: unknown, transfer: ArrayBuffer[]): void;
  onmessage: ((event: MessageEvent) => void) | null;
};
const handle = chunkWorker((done, transfer) =>
  scope.postMessage(done, transfer)
);
scope.onmessage = (event) => handle(event.data);
