/**
 * Web stream views over any {@linkcode Conn}'s pull API, shared by the
 * adapters (Bun keeps its own default-reader path, which hands out the
 * chunks Bun allocated, but answers BYOB reads and writes through these).
 *
 * @module
 */

import type { Conn } from "./types.ts";

/** Chunk size the `readable` view allocates for default (non-BYOB) readers. */
const STREAM_CHUNK_SIZE = 65_536;

/**
 * A byte stream over `conn.read`; BYOB readers fill their own buffers.
 *
 * @param conn The connection to read.
 * @returns A `bytes` stream; cancelling it closes `conn`.
 */
export function readableFrom(conn: Conn): ReadableStream<Uint8Array> {
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: STREAM_CHUNK_SIZE,
    async pull(controller) {
      if (await pullByob(conn, controller)) return;
      const chunk = new Uint8Array(STREAM_CHUNK_SIZE);
      const n = await conn.read(chunk);
      if (n === null) controller.close();
      else controller.enqueue(chunk.subarray(0, n));
    },
    cancel() {
      conn.close();
    },
  });
}

/**
 * Serves the stream's pending BYOB request, if any, by reading into the
 * reader's own buffer.
 *
 * @param conn The connection to read.
 * @param controller The byte stream's controller.
 * @returns True if there was a BYOB request (it is answered), false if the
 * reader wants a chunk of the stream's own.
 */
export async function pullByob(
  conn: Conn,
  controller: ReadableByteStreamController,
): Promise<boolean> {
  const request = controller.byobRequest;
  const view = request?.view;
  if (!request || !view) return false;
  const n = await conn.read(
    new Uint8Array(view.buffer, view.byteOffset, view.byteLength),
  );
  if (n === null) {
    controller.close();
    request.respond(0);
  } else {
    request.respond(n);
  }
  return true;
}

/**
 * A sink over `conn.write`; closing it half-closes, aborting it closes.
 *
 * @param conn The connection to write.
 * @returns The sink.
 */
export function writableFrom(conn: Conn): WritableStream<Uint8Array> {
  return new WritableStream({
    write: (chunk) => conn.write(chunk),
    close: () => conn.closeWrite(),
    abort: () => conn.close(),
  });
}
